"""A PPO run interrupted twice within one pass over its prompts: the checkpoint a resumed run writes can itself be
resumed, and the result equals a straight run bit for bit, its summary included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align import config, stages
from align.observe import tracking
from align.stages.ppo import PPOConfig

PROMPTS = Path(__file__).resolve().parents[2] / "examples" / "data" / "prompts.jsonl"


def make_cfg(out: Path, model_dir: Path, reward_dir: Path, steps: int, *overrides: str) -> PPOConfig:
    """Batches of 4 of the 20 example prompts: a pass lasts 5 updates, so updates 1 to 4 are all in the first."""
    base = {"model": {"name_or_path": str(model_dir)},
            "reward_model": {"name_or_path": str(reward_dir), "probe": False}, "data": {"train": [str(PROMPTS)]},
            "train": {"output_dir": str(out), "max_steps": steps, "learning_rate": 1e-3, "lr_scheduler": "constant",
                      "max_length": 160, "save_steps": 1, "save_total_limit": 2, "num_threads": 1},
            "tracking": {"backend": "none"},
            "ppo": {"rollout_batch_size": 4, "micro_batch": 2, "mini_batches": 2, "ppo_epochs": 1,
                    "response_length": 6}}
    return config.load_config(PPOConfig, None, list(overrides), base=base)


@pytest.mark.slow  # 2-4 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_a_checkpoint_written_after_a_resume_resumes_exactly(tmp_path, tiny_model_dir, tiny_reward_model_dir):
    straight = stages.run("ppo", make_cfg(tmp_path / "a", tiny_model_dir, tiny_reward_model_dir, 4)).output_dir

    out = tmp_path / "b"
    stages.run("ppo", make_cfg(out, tiny_model_dir, tiny_reward_model_dir, 2))
    stages.run("ppo", make_cfg(out, tiny_model_dir, tiny_reward_model_dir, 3, "train.resume=true"))
    resumed = stages.run("ppo", make_cfg(out, tiny_model_dir, tiny_reward_model_dir, 4, "train.resume=true"))
    assert resumed.metrics["steps"] == 4

    for file in ("model.safetensors", "value_model/model.safetensors"):
        a, b = load_file(str(straight / file)), load_file(str(out / file))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{file} differs after two resumes"
    logged_a, logged_b = tracking.read_metrics(straight), tracking.read_metrics(out)
    assert [m["step"] for m in logged_b] == [1, 2, 3, 4]
    for a, b in zip(logged_a, logged_b, strict=True):
        assert {k: v for k, v in a.items() if k != "time" and not k.startswith("timing/")} == \
               {k: v for k, v in b.items() if k != "time" and not k.startswith("timing/")}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    # The summary speaks of the whole run: its first update's score, and the health history from update 1.
    a, b = (json.loads((run / "summary.json").read_text()) for run in (straight, out))
    assert b["metrics"]["objective/scores_first"] == a["metrics"]["objective/scores_first"] == \
        logged_a[0]["objective/scores"]
    assert b["health"] == a["health"] and b["resumed"]["update"] == 3
    record = torch.load(out / "checkpoint-4" / "training_state.pt", weights_only=False)["record"]
    assert record["health"]["history"]["objective/scores"] == [m["objective/scores"] for m in logged_a]

    # Started again with resume once finished: no update left, the same final model, the same update count.
    again = stages.run("ppo", make_cfg(out, tiny_model_dir, tiny_reward_model_dir, 4, "train.resume=true"))
    assert again.metrics["steps"] == 4 and "objective/scores" not in again.metrics
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in tracking.read_metrics(out)] == [1, 2, 3, 4]
