"""Checkpoints: a run stopped after 2 updates and resumed equals a straight run, full fine-tuning and LoRA."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from align import stages
from align.observe import tracking
from align.stages.ppo import PPOConfig


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_continues_exactly(tmp_path, make_cfg, tiny_model_dir, tiny_reward_model_dir, lora):
    """4 updates in one go equal 2 updates, stop, resume, 2 more: same weights, same last metrics."""
    extra = ["model.lora.enabled=true", "model.lora.rank=4"] if lora else []
    straight = stages.run("ppo", make_cfg(tmp_path / "a", tiny_model_dir, "train.max_steps=4", *extra,
                                          reward_dir=tiny_reward_model_dir)).output_dir

    def make(steps: int, *more: str) -> PPOConfig:
        return make_cfg(tmp_path / "b", tiny_model_dir, f"train.max_steps={steps}", "train.save_steps=2", *extra,
                        *more, reward_dir=tiny_reward_model_dir)

    stages.run("ppo", make(2))
    out = tmp_path / "b" / "out"
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not list(out.glob("tmp-checkpoint-*"))
    resumed = stages.run("ppo", make(4, "train.resume=true")).output_dir

    policy_file = "adapter_model.safetensors" if lora else "model.safetensors"
    for file in (policy_file, "value_model/model.safetensors"):
        a, b = load_file(str(straight / file)), load_file(str(resumed / file))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{file} differs after resuming"
    logged_a, logged_b = tracking.read_metrics(straight), tracking.read_metrics(resumed)
    assert [m["step"] for m in logged_b] == [1, 2, 3, 4]
    for a, b in zip(logged_a[2:], logged_b[2:], strict=True):
        assert {k: v for k, v in a.items() if k != "time" and not k.startswith("timing/")} == \
               {k: v for k, v in b.items() if k != "time" and not k.startswith("timing/")}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resuming_at_the_last_update_saves_without_a_made_up_time(tmp_path, make_cfg, tiny_model_dir):
    """A run stopped at its last checkpoint (e.g. by SIGTERM) and resumed with max_steps there only writes the final
    model: its summary has no time per update, since it ran none."""
    rule = "examples/rewards.py:mentions_france"
    stages.run("ppo", make_cfg(tmp_path, tiny_model_dir, "train.max_steps=2", "train.save_steps=2", function=rule))
    (tmp_path / "out" / "model.safetensors").unlink()
    result = stages.run("ppo", make_cfg(tmp_path, tiny_model_dir, "train.max_steps=2", "train.resume=true",
                                        function=rule))
    assert result.metrics["steps"] == 2 and "s_per_update" not in result.metrics
    assert (tmp_path / "out" / "model.safetensors").is_file()
