"""The reward-model exploit probe before PPO: a failing reward model stops the run before any update, naming the
worst variant and the override key; the override runs it and keeps the probe."""

from __future__ import annotations

import json

from align import cli, config
from align.stages.ppo.config import PPOConfig


def write_cfg(path, cfg: PPOConfig):
    path.write_text(config.dump_yaml(cfg))
    return path


def test_a_failing_reward_model_refuses_to_start_naming_the_variant_and_override(
        tmp_path, make_cfg, tiny_model_dir, tiny_reward_model_dir, capsys):
    # Threshold 0: any variant that outscores the original even once fails the probe.
    cfg = make_cfg(tmp_path, tiny_model_dir, "reward_model.probe=true", "reward_model.probe_threshold=0",
                   "reward_model.probe_prompts=4", reward_dir=tiny_reward_model_dir)
    code = cli.main(["ppo", "--config", str(write_cfg(tmp_path / "ppo.yaml", cfg))])
    err = capsys.readouterr().err
    out = tmp_path / "out"
    probe = json.loads((out / "probe.json").read_text())
    assert code == 2 and not probe["passed"] and probe["pairs"] == 4
    assert f"'{probe['worst']}'" in err and "reward_model.probe_threshold=1.0" in err and "reward_model.probe=false" in err
    assert not list(out.glob("checkpoint-*")) and not (out / "summary.json").exists(), "nothing trained"


def test_the_override_records_the_probe_and_trains(tmp_path, make_cfg, tiny_model_dir, tiny_reward_model_dir):
    cfg = make_cfg(tmp_path, tiny_model_dir, "reward_model.probe=true", "reward_model.probe_threshold=1.0",
                   "reward_model.probe_prompts=4", "train.max_steps=1", reward_dir=tiny_reward_model_dir)
    assert cli.main(["ppo", "--config", str(write_cfg(tmp_path / "ppo.yaml", cfg))]) == 0
    out = tmp_path / "out"
    probe = json.loads((out / "probe.json").read_text())
    assert probe["passed"] and probe["threshold"] == 1.0
    assert set(probe["variants"]) >= {"ngram_loop", "list_spam", "filler", "empty"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["steps"] == 1 and summary["probe"] == probe
