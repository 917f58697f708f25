"""Two CPU processes (gloo) under `accelerate launch` give the loss curve of one process with the same global
batch, and write the outputs once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align import tracking

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def sft_config(tmp_path, model_dir, data, out, batch_size):
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "sft", "model": {"name_or_path": str(model_dir)}, "data": {"train": [str(data)]},
        "train": {"output_dir": str(tmp_path / out), "max_steps": 3, "batch_size": batch_size, "max_length": 128,
                  "learning_rate": 1e-3, "lr_scheduler": "constant", "num_threads": 1, "save_steps": 100},
    }))
    return path


@pytest.mark.slow
def test_two_process_sft_matches_one_process(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("".join((REPO / "examples/data/sft_chat.jsonl").read_text().splitlines(keepends=True)[:16]))
    env_cmd = [str(ACCELERATE), "launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
               "-m", "align.cli", "--log-level", "WARNING", "sft"]
    two = subprocess.run(env_cmd + ["--config", str(sft_config(tmp_path, tiny_model_dir, data, "two", 2))],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "align.cli", "--log-level", "WARNING", "sft", "--config",
                          str(sft_config(tmp_path, tiny_model_dir, data, "one", 4))],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    losses = {run: [m["loss"] for m in tracking.read_metrics(tmp_path / run) if "loss" in m] for run in ("one", "two")}
    assert len(losses["one"]) == 3
    assert losses["two"] == pytest.approx(losses["one"], rel=1e-4)
    assert two.stdout.count("sft done") == 1, "only the main process prints"
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["metrics"]["steps"] == 3
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"loss"' in line]) == 3, "metrics are written once, by the main process"
