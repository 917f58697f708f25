"""Read the records of an offline W&B run file (`run-<id>.wandb`) with wandb's own protobuf definitions.

The file is W&B's 7-byte header followed by LevelDB-log framed records (32 KiB blocks, 7-byte chunk headers:
crc32c, length, type FULL/FIRST/MIDDLE/LAST). Tests use this to check what a run really logged, not a mock.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            payload = chunk
        elif kind in (FIRST, MIDDLE):
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def summarize(path: str | Path) -> dict:
    """history keys, config keys, summary keys, run id, name, group, job_type, alerts and artifacts of one run file.

    Each artifact is {type, name, digest, used, refs}: `used` marks an input. Offline, wandb keeps an input as an
    `artifact` record flagged use_after_commit (it refuses `use_artifact` offline); online runs write `use_artifact`
    records (type and name only). `refs` are the manifest's reference URIs (empty for uploaded files).
    """
    out = {"history": set(), "config": set(), "summary": set(), "id": None, "name": None, "group": None,
           "job_type": None, "alerts": [], "artifacts": []}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"] |= {item.key or "/".join(item.nested_key) for item in rec.history.item}
        elif kind == "run":
            out["id"] = rec.run.run_id
            out["name"] = rec.run.display_name
            out["group"] = rec.run.run_group
            out["job_type"] = rec.run.job_type
            out["config"] |= {item.key for item in rec.run.config.update}
        elif kind == "artifact":
            art = rec.artifact
            out["artifacts"].append({"type": art.type, "name": art.name, "digest": art.digest,
                                     "used": art.use_after_commit, "refs": [e.ref for e in art.manifest.contents]})
        elif kind == "use_artifact":
            out["artifacts"].append({"type": rec.use_artifact.type, "name": rec.use_artifact.name, "digest": None,
                                     "used": True, "refs": []})
        elif kind == "config":
            out["config"] |= {item.key for item in rec.config.update}
        elif kind == "summary":
            out["summary"] |= {item.key or "/".join(item.nested_key) for item in rec.summary.update}
        elif kind == "alert":
            out["alerts"].append(rec.alert.title)
    return out


def finished_run_file(run_dir: Path, timeout_s: float = 15.0) -> Path:
    """The offline run file of the one run in `run_dir` once W&B has written its exit record."""
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return wait_finished(run_file, timeout_s)


def wait_finished(run_file: Path, timeout_s: float = 15.0) -> Path:
    """`run_file` once it holds its exit record. wandb 0.31 can return from `finish()` before its writer has
    flushed the file (seen here: 1 in 12 runs still held only the 7-byte header), so wait for it."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if any(record.WhichOneof("record_type") == "exit" for record in records(run_file)):
                return run_file
        except (DecodeError, struct.error):  # a record cut mid-write; read again
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_file} got no exit record within {timeout_s} s")
        time.sleep(0.05)
