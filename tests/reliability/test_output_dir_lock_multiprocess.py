"""The output-dir lock under `accelerate launch` with two CPU processes: only the main process takes it, both
processes stop with the same error when another run holds it, and a finished run leaves no lock. Slow: it launches
two processes twice."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align import rundir

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.slow
def test_two_processes_share_one_lock(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("".join((REPO / "examples/data/sft_chat.jsonl").read_text().splitlines(keepends=True)[:8]))
    out = tmp_path / "out"
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "stage": "sft", "model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(data)]},
        "train": {"output_dir": str(out), "max_steps": 1, "batch_size": 2, "max_length": 64, "num_threads": 1}}))
    launch = [str(ACCELERATE), "launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
              "-m", "align.cli", "--log-level", "WARNING", "sft", "--config", str(config)]

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        out.mkdir()
        (out / rundir.LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                                        "started_at": "2024-01-01T00:00:00"}))
        refused = subprocess.run(launch, check=False, capture_output=True, text=True, timeout=300)
    finally:
        other.kill()
        other.wait()
    assert refused.returncode != 0
    assert refused.stderr.count(f"error: {out} is in use by another run (pid {other.pid}") == 2, refused.stderr[-3000:]
    # accelerate's launcher prints its own traceback for a failed process; none comes from align.
    assert f'File "{REPO / "align"}' not in refused.stderr

    (out / rundir.LOCK_FILE).unlink()
    ran = subprocess.run(launch, check=False, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (out / rundir.SUMMARY).is_file() and not (out / rundir.LOCK_FILE).exists()
