"""Writers of hand-made run dirs for the report tests (a module of its own: test files import from it, and every
test folder's conftest.py is named the same)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import yaml

HOSTILE = "<script>alert('x')</script> & \"quotes\""
"""Reply text that must come out escaped."""
PROMPTS = ["what is 2+2?", "say <b>hi</b>", "name a colour"]


def png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG (what a browser can decode), without drawing anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\x20\x60\xc0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_stage(run: Path, name: str, index: int, *, finished_at: str, metrics: dict, alerts=(), inputs=None,
                replies=None, **summary) -> Path:
    out = run / name
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"stage": name, "model": {"name_or_path": "base/model"},
                                                     "data": {"train": [{"path": "data/train.jsonl"}]}}))
    write_json(out / "lineage.json", {
        "stage": name, "index": index, "config_hash": f"hash-{name}",
        "inputs": inputs or {"model": {"name_or_path": "base/model"}},
        "data": {"fingerprint": f"fp-{name}", "sources": [{"path": "data/train.jsonl", "used_for": "train",
                                                           "sha256": "ab" * 32}]},
        "tokenizer": {"vocabulary": "vocab123", "chat_template": "tmpl456", "eos_token": "<|im_end|>",
                      "pad_token": "<pad>"}})
    steps = metrics["steps"]
    write_jsonl(out / "metrics.jsonl", [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-3} for s in range(1, steps + 1)]
                + [{"step": steps, "eval_loss": 1.5}])
    if replies is not None:
        write_jsonl(out / "completions.jsonl", [
            {"step": step, "prompt": prompt, "completion": f"{text} ({step})", "length": 5, "eos": True,
             "repeated_ngram": False}
            for step, text in replies for prompt in PROMPTS])
    write_json(out / "summary.json", {
        "stage": name, "finished_at": finished_at, "metrics": metrics,
        "data": {"kind": "sft", "train_rows": 90, "eval_rows": 10,
                 "sources": [{"source": "data/train.jsonl", "format": "openai_chat", "rows_out": 100}]},
        "dropped": {"train: longer than train.max_length=64": 2},
        "parameters": {"trainable": 1000, "total": 4000}, "lora": True,
        "health": {"alerts": list(alerts), "stopped_on_fatal": None}, **summary})
    write_json(out / "DONE", {"config_hash": f"hash-{name}", "finished_at": finished_at})
    return out
