"""Health alerts: each rule fires on a metric stream showing its failure, once, and stays quiet on healthy runs."""

from __future__ import annotations

import math

import pytest

from align import config
from align.observe import health
from align.observe.health import HealthMonitor
from align.sections import HealthConfig


def run_stream(records: list[dict], max_steps: int | None = 100, **cfg) -> list[health.Alert]:
    return health.check([{"step": step, **metrics} for step, metrics in enumerate(records, 1)],
                        HealthConfig(**cfg), max_steps=max_steps)


def names(alerts: list[health.Alert]) -> list[str]:
    return [alert.name for alert in alerts]


def healthy_dpo(steps: int = 40) -> list[dict]:
    """Chosen log-probs drifting down a little, margins and accuracy rising slowly, finite losses."""
    return [{"loss": 0.69 - 0.005 * i, "grad_norm": 1.0, "logps/chosen": -100.0 - 0.5 * i,
             "logps/rejected": -100.0 - 2.0 * i, "rewards/margins": 0.02 * i,
             "rewards/accuracies": min(0.5 + 0.01 * i, 0.9)} for i in range(steps)]


def healthy_ppo(steps: int = 40) -> list[dict]:
    return [{"loss/policy_avg": 0.1, "objective/kl": 0.1 * i, "objective/scores": 0.01 * i,
             "tokens/response_len_mean": 30.0 + (i % 3), "val/frac_missing_eos": 0.1 + 0.05 * (i % 2)}
            for i in range(steps)]


def test_healthy_runs_raise_nothing():
    assert run_stream(healthy_dpo()) == []
    assert run_stream(healthy_ppo()) == []
    sampled = [{"completions/length_mean": 20.0 + (i % 4), "completions/eos_rate": 0.9 - 0.05 * (i % 2)}
               for i in range(20)]
    assert run_stream(sampled) == []


def test_chosen_logps_collapse_needs_falling_chosen_and_rising_margins():
    collapsing = [{"logps/chosen": -100.0 - 10 * i, "rewards/margins": 0.1 * i} for i in range(12)]
    alerts = run_stream(collapsing)
    assert names(alerts) == ["chosen_logps_collapse"]
    assert alerts[0].severity == "warning" and "logps/chosen" in alerts[0].message
    # The same fall while the margin shrinks is another story (everything is unlearning), not this rule.
    shrinking = [{"logps/chosen": -100.0 - 10 * i, "rewards/margins": -0.1 * i} for i in range(12)]
    assert run_stream(shrinking) == []


def test_eval_chosen_logps_are_watched_too():
    collapsing = [{"eval_logps/chosen": -50.0 - 10 * i, "eval_rewards/margins": 0.1 * i} for i in range(8)]
    assert names(run_stream(collapsing)) == ["chosen_logps_collapse"]


def test_perfect_accuracy_early_fires_but_late_does_not():
    early = [{"rewards/accuracies": 1.0} for _ in range(5)]
    alerts = run_stream(early, max_steps=100)
    assert names(alerts) == ["early_perfect_accuracy"] and alerts[0].step == 3
    late = [{"rewards/accuracies": 0.6} for _ in range(30)] + [{"rewards/accuracies": 1.0} for _ in range(5)]
    assert run_stream(late, max_steps=100) == []
    assert run_stream(early, max_steps=None) == [], "unknown run length: the rule cannot say 'early'"
    one_lucky_batch = [{"rewards/accuracies": a} for a in (1.0, 0.5, 1.0, 0.75, 1.0)]
    assert run_stream(one_lucky_batch) == []


@pytest.mark.parametrize("key", ["tokens/response_len_mean", "completions/length_mean"])
def test_length_runaway(key):
    growing = [{key: 20.0 * (1.3 ** i)} for i in range(10)]
    alerts = run_stream(growing)
    assert names(alerts) == ["length_runaway"] and key in alerts[0].message
    assert run_stream(growing, length_growth=100.0) == []


def test_eos_rate_drop_from_sampled_completions_and_from_ppo():
    falling = [{"completions/eos_rate": max(0.9 - 0.15 * i, 0.0)} for i in range(8)]
    assert names(run_stream(falling)) == ["eos_rate_drop"]
    ppo = [{"val/frac_missing_eos": min(0.1 + 0.15 * i, 1.0)} for i in range(8)]
    assert names(run_stream(ppo)) == ["eos_rate_drop"]


def test_repetition_rise_from_ppo_rollouts_or_sampled_completions():
    # The real PPO run of docs/results_ppo.md: about 5% of replies repeated a 4-gram at first, over 30% by update 40.
    rising = [{"completions/repetition_rate": rate} for rate in (0.06, 0.0, 0.06, 0.0, 0.12, 0.19, 0.25, 0.31)]
    alerts = run_stream(rising)
    assert names(alerts) == ["repetition_rise"] and alerts[0].step == 8
    assert "0.04 to 0.25" in alerts[0].message and alerts[0].severity == "warning"
    assert run_stream(rising, repetition_rise=0.5) == []
    noisy = [{"completions/repetition_rate": rate} for rate in (0.1, 0.3, 0.0, 0.2, 0.1, 0.3, 0.0, 0.2)]
    assert run_stream(noisy) == []


def test_kl_blowup_by_level_and_by_jump():
    level = [{"objective/kl": 25.0} for _ in range(3)]
    alerts = run_stream(level)
    assert names(alerts) == ["kl_blowup"] and "limit 20" in alerts[0].message
    jump = [{"objective/kl": 1.0} for _ in range(5)] + [{"objective/kl": 9.0}]
    alerts = run_stream(jump)
    assert names(alerts) == ["kl_blowup"] and alerts[0].step == 6 and "jumped" in alerts[0].message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "nan", "-inf"])
def test_non_finite_loss_is_fatal(bad):
    stream = healthy_dpo(5) + [{"loss": bad, "grad_norm": 1.0}]
    alerts = run_stream(stream)
    assert names(alerts) == ["non_finite_loss"]
    assert alerts[0].severity == "fatal" and alerts[0].step == 6


def test_nan_grad_norm_is_fatal_and_other_nans_are_not():
    assert names(run_stream([{"loss": 0.5, "grad_norm": float("nan")}])) == ["non_finite_loss"]
    assert run_stream([{"loss": 0.5, "rewards/margins": float("nan")}]) == []


def test_each_rule_fires_once():
    stream = [{"objective/kl": 30.0, "loss": float("nan")} for _ in range(6)]
    assert sorted(names(run_stream(stream))) == ["kl_blowup", "non_finite_loss"]


def test_disabled_config_raises_nothing():
    assert run_stream([{"loss": float("nan")}], enabled=False) == []


def test_check_reads_metrics_jsonl_as_the_tracker_writes_it(tmp_path):
    from align.observe.tracking import Tracker, read_metrics
    from align.sections import TrackingConfig

    tracker = Tracker(TrackingConfig(backend="none"), tmp_path, stage="dpo", run_config={})
    tracker.log({"loss": 0.7}, step=1)
    tracker.log({"loss": float("nan")}, step=2)  # stored as the string "nan"
    tracker.finish()
    alerts = health.check(read_metrics(tmp_path))
    assert [(a.name, a.step, a.severity) for a in alerts] == [("non_finite_loss", 2, "fatal")]


def test_config_loads_with_overrides_and_reports_bad_values():
    cfg = config.load_config(HealthConfig, overrides=["kl_max=8", "window=2"])
    assert cfg.kl_max == 8.0 and cfg.window == 2
    with pytest.raises(config.ConfigError, match="length_growth: must be > 1.*eos_rate_drop|eos_rate_drop.*length"):
        config.load_config(HealthConfig, overrides=["length_growth=0.5", "eos_rate_drop=2"])
    with pytest.raises(config.ConfigError, match="repetition_rise: must be in"):
        config.load_config(HealthConfig, overrides=["repetition_rise=0"])


def make_state(step: int, max_steps: int = 100):
    from transformers import TrainerState

    return TrainerState(global_step=step, max_steps=max_steps)


def test_callback_stops_training_on_nan_and_flags_the_stage():
    from transformers import TrainerControl

    callback = health.health_callback(HealthMonitor(), tracker=None)
    control = TrainerControl()
    callback.on_train_begin(None, make_state(0, max_steps=50), control)
    assert callback.monitor.max_steps == 50
    callback.on_log(None, make_state(1), control, logs={"loss": 0.7, "grad_norm": 1.0})
    assert not control.should_training_stop and not callback.stopped_on_fatal
    control.should_save = True  # this step was due a checkpoint
    callback.on_log(None, make_state(2), control, logs={"loss": float("nan"), "grad_norm": float("nan")})
    assert control.should_training_stop
    assert not control.should_save, "the broken weights must not become a checkpoint"
    assert callback.stopped_on_fatal
    summary = callback.summary()
    assert summary["stopped_on_fatal"]["name"] == "non_finite_loss" and summary["stopped_on_fatal"]["step"] == 2
    assert [a["name"] for a in summary["alerts"]] == ["non_finite_loss"]


def test_warnings_are_logged_and_do_not_stop_training(caplog):
    from transformers import TrainerControl

    callback = health.health_callback(HealthMonitor(), tracker=None)
    control = TrainerControl()
    with caplog.at_level("WARNING", logger="align.observe.health"):
        for step in range(1, 4):
            callback.on_log(None, make_state(step), control, logs={"objective/kl": 50.0})
    assert not control.should_training_stop and not callback.stopped_on_fatal
    assert [a.name for a in callback.alerts] == ["kl_blowup"]
    assert "health alert kl_blowup at step 3" in caplog.text


def test_alert_reaches_an_offline_wandb_run(tmp_path, monkeypatch):
    from wandb_records import finished_run_file, summarize

    from align.observe.tracking import Tracker
    from align.sections import TrackingConfig

    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(TrackingConfig(backend="wandb", mode="offline"), tmp_path, stage="dpo", run_config={})
    reporter = health.HealthReporter(HealthMonitor(), tracker)
    tracker.log({"loss": float("nan")}, step=1)
    alerts = reporter.observe(1, {"loss": float("nan")})
    assert [a.severity for a in alerts] == ["fatal"]
    tracker.finish()
    assert summarize(finished_run_file(tmp_path))["alerts"] == ["non_finite_loss"]


def test_as_number():
    assert health.as_number(3) == 3.0 and health.as_number(True) is None and health.as_number("abc") is None
    assert math.isnan(health.as_number("nan")) and health.as_number("-inf") == float("-inf")



def test_nan_stops_a_real_trainer_without_checkpointing_the_broken_weights(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [5, 6, 7, 8, 9, 10]} for _ in range(24)]

    class BreakWeightsAfterStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.lm_head.weight.fill_(float("nan"))

    guard = health.health_callback(HealthMonitor(), tracker=None)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=2, logging_steps=1,
                             save_steps=1, save_total_limit=10, report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[guard, BreakWeightsAfterStep2()])
    trainer.train()
    assert trainer.state.global_step == 3, "stopped at the first NaN loss, not at max_steps"
    assert guard.stopped_on_fatal and guard.fatal.step == 3
    assert (tmp_path / "checkpoint-2").is_dir()
    assert not (tmp_path / "checkpoint-3").exists(), "the NaN weights were not checkpointed"


# Stage runs: a NaN loss stops the stage, keeps the last checkpoint and saves no final model.

def poison_lm_head(model) -> None:
    import torch

    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))


@pytest.fixture
def poison_after_step_2(monkeypatch):
    """Make every TRL stage's model NaN after its second optimizer step, through the callbacks it is built with."""
    from transformers import TrainerCallback

    from align.stages import trainer

    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                poison_lm_head(model)

    real = trainer.trainer_callbacks

    def trainer_callbacks(*args, **kwargs):
        found = real(*args, **kwargs)
        found.callbacks.append(Poison())
        return found

    monkeypatch.setattr(trainer, "trainer_callbacks", trainer_callbacks)


def sft_rows(path):
    import json

    from tiny import CONVERSATIONS, messages

    path.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in CONVERSATIONS))
    return path


TRAIN = {"max_steps": 5, "batch_size": 2, "learning_rate": 1e-2, "max_length": 64, "save_steps": 1,
         "save_total_limit": 5, "num_threads": 1, "lr_scheduler": "constant"}


def all_finite(path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values())


def test_nan_stops_an_sft_stage_keeps_the_last_checkpoint_and_says_why(tmp_path, tiny_model_dir,
                                                                        poison_after_step_2):
    import json

    from align import stages
    from align.stages.sft import SFTConfig

    cfg = config.load_config(SFTConfig, base={
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": [str(sft_rows(tmp_path / "sft.jsonl"))], "eval_fraction": 0.4},
        "train": {**TRAIN, "output_dir": str(tmp_path / "out")}})
    result = stages.run("sft", cfg)
    out = result.output_dir
    assert result.metrics["steps"] == 3 and "eval_loss" not in result.metrics, "stopped at once, no evaluation"
    assert not (out / "model.safetensors").exists(), "the broken weights are not saved as the final model"
    assert not (out / "checkpoint-3").exists()
    assert all_finite(out / "checkpoint-2" / "model.safetensors")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["health"]["stopped_on_fatal"]["name"] == "non_finite_loss"
    assert summary["stopping"]["last_checkpoint"] == str(out / "checkpoint-2")
    assert summary["stopping"]["reason"].startswith("fatal health alert non_finite_loss at step 3")
    assert "not saved" in summary["stopping"]["final_model"]
    assert result.notes["stopped"] == "stopped on the fatal health alert non_finite_loss at step 3"


def test_nan_stopped_stage_exits_2_from_the_cli(tmp_path, tiny_model_dir, poison_after_step_2, capsys):
    import yaml

    from align import cli

    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "sft", "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": [str(sft_rows(tmp_path / "sft.jsonl"))]},
        "train": {**TRAIN, "output_dir": str(tmp_path / "out")}}))
    assert cli.main(["sft", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: stopped on the fatal health alert non_finite_loss at step 3" in err and "checkpoint" in err


def test_nan_in_a_pipeline_stage_stops_the_pipeline_before_the_next_stage(tmp_path, tiny_model_dir,
                                                                           poison_after_step_2, capsys):
    import yaml
    from tiny import PAIRS, write_pairs

    from align import cli

    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    stage_train = {k: v for k, v in TRAIN.items() if k != "save_total_limit"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "pipeline", "run_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tiny_model_dir)},
        "stages": [{"name": "sft", "config": {"data": {"train": [str(sft_rows(tmp_path / "sft.jsonl"))]},
                                              "train": stage_train}},
                   {"name": "dpo", "config": {"data": {"train": [str(pairs)]}, "train": stage_train}}]}))
    assert cli.main(["pipeline", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages[0] (sft): stopped on the fatal health alert non_finite_loss at step 3" in err
    assert not (tmp_path / "run" / "sft" / "DONE").exists() and not (tmp_path / "run" / "dpo").exists()


def test_nan_stops_ppo_and_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import json
    from pathlib import Path

    from align import stages
    from align.observe import tracking
    from align.stages import ppo
    from align.stages.ppo import update as ppo_update

    rule = tmp_path / "rules.py"
    rule.write_text("def half(prompts, completions):\n    return [0.5] * len(completions)\n")
    real, calls = ppo_update.ppo_epochs, []

    def optimise(cfg, b, exp, shaped):
        calls.append(1)
        if len(calls) == 2:  # update 2 trains on NaN weights, so its losses are NaN
            poison_lm_head(b.policy)
        return real(cfg, b, exp, shaped)

    monkeypatch.setattr(ppo_update, "ppo_epochs", optimise)
    prompts = Path(__file__).resolve().parents[2] / "examples" / "data" / "prompts.jsonl"
    cfg = config.load_config(ppo.PPOConfig, base={
        "model": {"name_or_path": str(tiny_model_dir)}, "reward_model": {"function": f"{rule}:half"},
        "data": {"train": [str(prompts)]},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "learning_rate": 1e-3, "max_length": 160,
                  "save_steps": 1, "num_threads": 1},
        "ppo": {"rollout_batch_size": 4, "micro_batch": 2, "mini_batches": 2, "ppo_epochs": 1,
                "response_length": 6}})
    result = stages.run("ppo", cfg)
    out = result.output_dir
    assert len(calls) == 2 and result.metrics["steps"] == 2
    assert [m["step"] for m in tracking.read_metrics(out)] == [1, 2]
    assert tracking.read_metrics(out)[-1]["loss/policy_avg"] == "nan"
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint-2").exists()
    assert all_finite(out / "checkpoint-1" / "policy" / "model.safetensors")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopping"]["last_checkpoint"] == str(out / "checkpoint-1")
    assert summary["health"]["stopped_on_fatal"]["step"] == 2
    assert result.notes["stopped"] == "stopped on the fatal health alert non_finite_loss at update 2"


def test_the_health_section_loads_without_torch():
    import subprocess
    import sys

    code = "import sys, align.sections; print(align.sections.TrackingConfig().health.kl_max, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["20.0", "False"]
