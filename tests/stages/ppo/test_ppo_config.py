"""PPOConfig's rules, checked when a config loads (before any weights), and loading one without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from align.errors import ConfigError


@pytest.mark.parametrize("overrides, message", [
    (["reward_model.function=x:y"], "set exactly one"),
    (["ppo.trl_parity=true"], "set score_index=after_eos"),
    (["ppo.trl_parity=true", "ppo.score_index=after_eos"], "set train.max_grad_norm=0"),
    (["ppo.rollout_batch_size=12"], "must split into mini_batches=2"),
    (["train.batch_size=8"], "leave train.batch_size"),
    (["data.eval_fraction=0.1"], "no evaluation pass"),
    (["model.freeze.first_layers=1"], "model.freeze: not supported"),
    (["ppo.top_p=0", "ppo.temperature=0"], "top_p: must be in"),
])
def test_config_rules(tmp_path, make_cfg, tiny_model_dir, tiny_reward_model_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(tmp_path, tiny_model_dir, *overrides, reward_dir=tiny_reward_model_dir)


def test_a_ppo_config_loads_without_torch():
    """`align validate` and the stage registry load PPOConfig; only `build` and `run` need torch."""
    code = ("import sys\nfrom align import stages\nprint(stages.config_class('ppo').__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PPOConfig", "False"]
