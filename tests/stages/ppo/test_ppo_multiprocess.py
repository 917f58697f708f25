"""The PPO stage on two CPU processes (gloo) under `accelerate launch`: it finishes, reduces its metrics over both
processes, and writes every output once (checkpoints hold each process's RNG states). Slow: it launches two
processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align.observe import tracking

REPO = Path(__file__).resolve().parents[3]
ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.slow
def test_two_process_ppo_finishes_and_writes_outputs_once(tmp_path, tiny_model_dir, tiny_reward_model_dir):
    out = tmp_path / "out"
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(yaml.safe_dump({
        "stage": "ppo", "model": {"name_or_path": str(tiny_model_dir)},
        "reward_model": {"name_or_path": str(tiny_reward_model_dir), "probe": False},
        "data": {"train": [str(REPO / "examples/data/prompts.jsonl")]},
        "train": {"output_dir": str(out), "max_steps": 2, "learning_rate": 1e-3, "max_length": 160, "save_steps": 2,
                  "num_threads": 1},
        "tracking": {"backend": "jsonl"},
        "ppo": {"rollout_batch_size": 8, "micro_batch": 2, "mini_batches": 2, "ppo_epochs": 2, "response_length": 8,
                "sample_every": 1},
    }))
    run = subprocess.run([str(ACCELERATE), "launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
                          "-m", "align.cli", "--log-level", "WARNING", "ppo", "--config", str(cfg)],
                         check=False, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("ppo done") == 1, "only the main process prints"

    logged = tracking.read_metrics(out)
    assert [m["step"] for m in logged] == [1, 2], "metrics are written once, by the main process"
    assert logged[-1]["episode"] == 16
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2 * 4, "the main process's 4 rows per update"
    assert json.loads((out / "summary.json").read_text())["metrics"]["steps"] == 2
    assert (out / "model.safetensors").is_file() and (out / "value_model" / "model.safetensors").is_file()
    checkpoint = out / "checkpoint-2"
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert json.loads((checkpoint / "trainer_state.json").read_text()) == {"global_step": 2, "processes": 2}
