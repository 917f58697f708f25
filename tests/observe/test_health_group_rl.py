"""Health rules on the metrics GRPO and RLOO log (TRL's keys, and the training completions' repetition rate): each
fires on a stream showing its failure and stays quiet on a healthy one."""

from __future__ import annotations

import pytest

from align import config
from align.errors import ConfigError
from align.observe import health
from align.sections import HealthConfig


def alerts(records: list[dict], **cfg) -> dict[str, health.Alert]:
    found = health.check([{"step": step, **metrics} for step, metrics in enumerate(records, 1)], HealthConfig(**cfg))
    return {alert.name: alert for alert in found}


def group_rl(steps: int = 30, **changes) -> list[dict]:
    """A healthy GRPO stream: the reward climbing by 0.02 a log against a spread of 0.3, KL and lengths steady."""
    rows = [{"loss": 0.01, "grad_norm": 1.0, "reward": 0.2 + 0.02 * i, "reward_std": 0.3, "kl": 0.01 * (i % 3),
             "completions/mean_length": 40.0 + (i % 4), "completions/train_repetition_rate": 0.1}
            for i in range(steps)]
    for key, values in changes.items():
        for row, value in zip(rows, values, strict=True):
            row[key.replace("__", "/")] = value
    return rows


def test_a_healthy_group_rl_run_raises_nothing():
    assert alerts(group_rl()) == {}


def test_a_flat_reward_is_a_plateau_once_it_has_had_reward_plateau_logs():
    flat = [0.2 + 0.01 * (i % 2) for i in range(30)]  # at log 20: 0.2033 -> 0.2067, less than 0.1 x 0.3 above
    found = alerts(group_rl(reward=flat))
    assert list(found) == ["reward_plateau"] and found["reward_plateau"].step == 20
    assert "frac_reward_zero_std" in found["reward_plateau"].message and "0.3" in found["reward_plateau"].message
    assert alerts(group_rl(reward=flat), reward_plateau_logs=40) == {}, "too few logs yet to judge"
    slow = [0.2 + 0.002 * i for i in range(30)]  # by log 20: 0.036 above the start, > 0.1 x 0.3
    assert alerts(group_rl(reward=slow)) == {}
    assert "reward_plateau" in alerts(group_rl(reward=slow), reward_plateau_gain=0.2)


def test_without_a_spread_any_rise_is_progress_and_none_is_a_plateau():
    assert alerts(group_rl(reward=[0.5] * 30, reward_std=[0.0] * 30)).keys() == {"reward_plateau"}
    assert alerts(group_rl(reward=[0.5 + 0.001 * i for i in range(30)], reward_std=[0.0] * 30)) == {}


@pytest.mark.parametrize(("kl", "message"), [
    ([0.1 * i for i in range(30)], "averages 1.1 nats per token over the last 3 logs (limit 1)"),
    ([0.05] * 10 + [0.9] + [0.05] * 19, "jumped to 0.9"),
])
def test_the_per_token_kl_has_its_own_limit(kl, message):
    found = alerts(group_rl(kl=kl), token_kl_max=1.0 if "averages" in message else 0.5)
    assert list(found) == ["kl_blowup"] and message in found["kl_blowup"].message
    assert found["kl_blowup"].message.startswith("kl ")


def test_trl_completion_lengths_and_the_training_repetition_rate_are_watched():
    found = alerts(group_rl(completions__mean_length=[40.0] * 10 + [100.0] * 20,
                            completions__train_repetition_rate=[0.1] * 10 + [0.5] * 20))
    assert set(found) == {"length_runaway", "repetition_rise"}
    assert "completions/mean_length grew from 40 to 100" in found["length_runaway"].message
    assert "completions/train_repetition_rate rose from 0.1 to 0.367" in found["repetition_rise"].message


def test_the_new_thresholds_are_checked():
    with pytest.raises(ConfigError, match="token_kl_max: must be > 0"):
        config.load_config(HealthConfig, None, ["token_kl_max=0"])
    with pytest.raises(ConfigError, match="reward_plateau_logs: must be >= 1"):
        config.load_config(HealthConfig, None, ["reward_plateau_logs=0"])
