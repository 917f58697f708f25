"""What the PPO stage's tests share: a small config on the tiny models (`make_cfg`), a constant reward rule, and a
spy that keeps the PPOBuild of the next run. The tiny models come from tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from align import config
from align.stages.ppo.config import PPOConfig

PROMPTS = Path(__file__).resolve().parents[3] / "examples" / "data" / "prompts.jsonl"


@pytest.fixture(scope="session")
def make_cfg():
    """make_cfg(tmp_path, model_dir, *overrides, reward_dir=None, function=None) -> PPOConfig: 2 updates of 8 prompts
    in 2 minibatches of 2 micro-batches, 8 response tokens, no tracking; a reward model or a reward rule."""

    def make(tmp_path, model_dir, *overrides, reward_dir=None, function=None) -> PPOConfig:
        # The exploit probe is off here (a random tiny reward model fails it); tests/stages/ppo/test_ppo_probe.py
        # turns it on.
        reward = {"name_or_path": str(reward_dir), "probe": False} if reward_dir else {"function": function}
        base = {"model": {"name_or_path": str(model_dir)}, "reward_model": reward, "data": {"train": [str(PROMPTS)]},
                "train": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "learning_rate": 1e-3,
                          "lr_scheduler": "constant", "max_length": 160, "save_steps": 100, "num_threads": 1},
                "tracking": {"backend": "none"},
                "ppo": {"rollout_batch_size": 8, "micro_batch": 4, "mini_batches": 2, "ppo_epochs": 2,
                        "response_length": 8}}
        return config.load_config(PPOConfig, None, list(overrides), base=base)

    return make


@pytest.fixture
def capture_build(monkeypatch):
    """The PPOBuild of the next run, to look at its models after training."""
    from align.stages.ppo import setup

    built = []
    real = setup.build

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(setup, "build", spy)
    return built


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "rules.py"
    path.write_text("def half(prompts, completions):\n    return [0.5] * len(completions)\n")
    return path
