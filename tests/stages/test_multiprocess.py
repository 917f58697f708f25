"""Two CPU processes (gloo) under `accelerate launch` give the loss curve of one process with the same global
batch, and write the outputs once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align.observe import tracking

REPO = Path(__file__).resolve().parents[2]
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
                         check=False, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "align.cli", "--log-level", "WARNING", "sft", "--config",
                          str(sft_config(tmp_path, tiny_model_dir, data, "one", 4))],
                         check=False, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    losses = {run: [m["loss"] for m in tracking.read_metrics(tmp_path / run) if "loss" in m] for run in ("one", "two")}
    assert len(losses["one"]) == 3
    assert losses["two"] == pytest.approx(losses["one"], rel=1e-4)
    assert two.stdout.count("sft done") == 1, "only the main process prints"
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["metrics"]["steps"] == 3
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"loss"' in line]) == 3, "metrics are written once, by the main process"


def dpo_config(tmp_path, model_dir, data, out, batch_size, precompute):
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "dpo", "model": {"name_or_path": str(model_dir)}, "data": {"train": [str(data)]},
        "train": {"output_dir": str(tmp_path / out), "max_steps": 3, "batch_size": batch_size, "max_length": 64,
                  "learning_rate": 1e-2, "lr_scheduler": "constant", "num_threads": 1, "save_steps": 2},
        "beta": 0.5, "precompute_ref_log_probs": precompute,
    }))
    return path


@pytest.mark.slow
def test_two_process_dpo_matches_one_process(tmp_path, tiny_model_dir):
    """Live reference and precomputed (cached) reference log-probs on 2 processes x 2 pairs, against 1 process x 4.

    Tolerance: the processes see the same 4 pairs per step (same seed and sampler), DDP averages their gradients and
    the logged loss, and DPO's loss is a mean over pairs, so the curves agree up to float32 rounding: summation order
    in the all-reduce and batches padded to other lengths. rel=1e-4 is far above that and far below what a real
    fault moves (a pair scored against another pair's reference log-probs, or one process's half of the batch lost).
    """
    from tiny import PAIRS, write_pairs

    from align.stages import ref_cache

    data = write_pairs(tmp_path / "train.jsonl", PAIRS[:8])
    launch = [str(ACCELERATE), "launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
              "-m", "align.cli", "--log-level", "WARNING", "dpo", "--config"]
    runs = {
        "two": launch + [str(dpo_config(tmp_path, tiny_model_dir, data, "two", 2, False))],
        "two_cached": launch + [str(dpo_config(tmp_path, tiny_model_dir, data, "two_cached", 2, True))],
        "one": [sys.executable, "-m", "align.cli", "--log-level", "WARNING", "dpo", "--config",
                str(dpo_config(tmp_path, tiny_model_dir, data, "one", 4, False))],
    }
    stdout = {}
    for name, cmd in runs.items():
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        stdout[name] = done.stdout

    losses = {name: [m["loss"] for m in tracking.read_metrics(tmp_path / name) if "loss" in m] for name in runs}
    assert len(losses["one"]) == 3 and len(set(losses["one"])) == 3
    assert losses["two"] == pytest.approx(losses["one"], rel=1e-4)
    assert losses["two_cached"] == pytest.approx(losses["one"], rel=1e-4)
    for name in ("two", "two_cached"):
        assert stdout[name].count("dpo done") == 1, "only the main process prints"
        assert (tmp_path / name / "model.safetensors").is_file() and (tmp_path / name / "checkpoint-2").is_dir()
    summary = json.loads((tmp_path / "two_cached" / "summary.json").read_text())
    assert summary["reference_log_probs"]["train"]["cache"] == "miss"
    assert [p.name for p in ref_cache.cache_root().iterdir()] == [summary["reference_log_probs"]["train"]["key"]], \
        "the main process wrote one complete entry"
