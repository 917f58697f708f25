"""A hand-made pipeline run dir with everything the report shows: three stages (finished in the order sft, reward,
dpo, which is not their names' order), health alerts, a probe, an eval with baselines, and replies holding HTML."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_runs import HOSTILE, PROMPTS, png, write_json, write_jsonl, write_stage


@pytest.fixture
def hand_made_run(tmp_path) -> Path:
    run = tmp_path / "run"
    write_stage(run, "sft", 0, finished_at="2026-01-01T10:00:00",
                metrics={"steps": 4, "train_loss": 2.5, "train_runtime_s": 12.5, "tokens_per_s": 812.25,
                         "peak_memory_gb": 1.25},
                replies=[(0, "first try"), (4, HOSTILE)])
    reward = write_stage(run, "reward", 1, finished_at="2026-01-01T10:05:00",
                         metrics={"steps": 3, "train_loss": 0.6, "eval_accuracy": 0.7, "train_runtime_s": 300.0},
                         inputs={"model": {"name_or_path": str(run / "sft"), "stage": "sft", "config_hash": "hash-sft"}},
                         held_out={"pairs": 40, "accuracy": {"all": {
                             "reward model": {"accuracy": 0.65, "ci": [0.5, 0.775], "n": 40},
                             "shorter reply": {"accuracy": 0.45, "ci": [0.3, 0.6], "n": 40}}}})
    write_json(reward / "probe.json", {
        "reward_model": str(reward), "pairs": 50, "threshold": 0.5, "worst": "truncated",
        "variants": {"truncated": {"n": 50, "win_rate": 0.7, "ci": [0.6, 0.8], "mean_margin": 0.25},
                     "repeated": {"n": 50, "win_rate": 0.2, "ci": [0.1, 0.3], "mean_margin": -0.5}},
        "passed": False})
    write_stage(run, "dpo", 2, finished_at="2026-01-01T10:10:00",
                metrics={"steps": 5, "train_loss": 0.4, "eval_rewards/accuracies": 0.75, "train_runtime_s": 20.0,
                         "tokens_per_s": 500.0},
                alerts=[{"name": "kl_blowup", "step": 3, "message": "KL 12.5 > 10 <rising>", "severity": "warning"}],
                inputs={"model": {"name_or_path": str(run / "sft"), "stage": "sft", "config_hash": "hash-sft"}},
                replies=[(5, "dpo says")])
    evaluation = run / "eval"
    write_json(evaluation / "eval.json", {
        "data": {"path": "data/heldout.jsonl", "format": "trl_preference", "prompts": 3, "pairs": 100},
        "settings": {"max_new_tokens": 32, "temperature": 1.0},
        "judge": {"spec": "reward:run/reward", "pairs": {"accuracy": 0.66, "margin_mean": 0.5}},
        "reference": {"name": "sft", "path": str(run / "sft"), "generation": {"length_mean": 10.0},
                      "per_sample": {"length": [10, 10, 10]}},
        "policies": [{"name": "dpo", "path": str(run / "dpo"),
                      "generation": {"length_mean": 12.0, "win_rate": 0.62, "win_rate_ci": [0.55, 0.69], "kl": 0.3},
                      "pairs": {"rewards/accuracies": 0.75}, "per_sample": {"length": [12, 12, 12]}}],
        "baselines": {"all": {"dpo": {"accuracy": 0.75, "ci": [0.66, 0.83], "n": 100},
                              "longer reply": {"accuracy": 0.51, "ci": [0.42, 0.6], "n": 100}},
                      "harmless.jsonl": {"longer reply": {"accuracy": 0.3, "ci": [0.2, 0.41], "n": 40}}}})
    write_jsonl(evaluation / "samples.jsonl", [{"model": model, "prompt": prompt, "completion": f"{model}: {HOSTILE}",
                                                "length": 7, "eos": False, "judge_score": 0.5}
                                               for model in ("sft", "dpo") for prompt in PROMPTS])
    (evaluation / "eval_summary.png").write_bytes(png())
    return run
