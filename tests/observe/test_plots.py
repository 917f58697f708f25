"""Run curves from metrics.jsonl: one valid PNG per metric group, bookkeeping keys left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.observe import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


def write_metrics(out: Path, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def dpo_and_ppo_records() -> list[dict]:
    records = []
    for step in range(1, 7):
        records.append({"step": step, "time": 1000.0 + step, "epoch": step / 6, "loss": 0.7 - 0.05 * step,
                        "grad_norm": 1.0, "learning_rate": 1e-5, "rewards/chosen": 0.01 * step,
                        "rewards/rejected": -0.01 * step, "rewards/margins": 0.02 * step,
                        "rewards/accuracies": 0.5 + 0.05 * step, "logps/chosen": -50.0 - step,
                        "logps/rejected": -60.0 - 2 * step, "objective/kl": 0.1 * step,
                        "objective/scores": 0.2 * step, "objective/entropy": 3.0, "policy/approxkl_avg": 0.01,
                        "num_input_tokens_seen": 100 * step})
        if step % 3 == 0:
            records.append({"step": step, "eval_loss": 0.69 - 0.03 * step, "eval_rewards/margins": 0.015 * step,
                            "eval_rewards/accuracies": 0.6, "eval_runtime": 0.5, "eval_samples_per_second": 8.0})
    records.append({"step": 6, "train_runtime": 12.0, "train_loss": 0.55, "total_flos": 1.0})
    records.append({"step": 7, "loss": "nan", "note": "text is skipped"})
    return records


def test_plot_run_writes_one_png_per_group(tmp_path):
    write_metrics(tmp_path, dpo_and_ppo_records())
    written = plots.plot_run(tmp_path)
    assert {p.name for p in written} == {"loss.png", "optimizer.png", "rewards.png", "logps.png", "objective.png",
                                         "policy.png"}
    for path in written:
        assert path.parent == tmp_path / "plots" and is_png(path)


def test_curves_pair_train_and_eval_and_skip_bookkeeping():
    grouped = plots.curves(dpo_and_ppo_records())
    assert set(grouped["rewards"]) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert grouped["rewards"]["rewards/margins"]["eval"] == [[3.0, 6.0], [0.045, 0.09]]
    assert len(grouped["loss"]["loss"]["train"][0]) == 7, "the nan log is kept (a gap), not dropped"
    everything = {metric for metrics in grouped.values() for metric in metrics}
    assert not everything & {"epoch", "time", "train_runtime", "train_loss", "total_flos", "runtime",
                             "samples_per_second", "num_input_tokens_seen", "note"}


@pytest.mark.parametrize("metric, group", [("loss", "loss"), ("loss/policy_avg", "loss"), ("lr", "optimizer"),
                                           ("objective/kl", "objective"), ("val/ratio", "val"),
                                           ("completions/eos_rate", "completions"), ("mean_token_accuracy",
                                                                                     "accuracy"),
                                           ("something", "other")])
def test_group_of(metric, group):
    assert plots.group_of(metric) == group


def test_no_metrics_no_plots(tmp_path):
    assert plots.plot_run(tmp_path) == []
    assert not (tmp_path / "plots").exists()


def test_a_plotting_failure_is_a_warning(tmp_path, monkeypatch, caplog, stage_plots):
    write_metrics(tmp_path, dpo_and_ppo_records())

    def broken():
        raise RuntimeError("no backend")

    monkeypatch.setattr(plots, "pyplot", broken)
    with caplog.at_level("WARNING", logger="align.observe.plots"):
        assert plots.plot_finished_run(tmp_path) == []
    assert "could not draw the metric plots (RuntimeError: no backend)" in caplog.text


def test_a_finished_stage_has_its_plots_and_a_health_summary(sft_run):
    written = sorted((sft_run.out / "plots").glob("*.png"))
    assert {"loss.png", "optimizer.png", "completions.png"} <= {p.name for p in written}
    assert all(is_png(p) for p in written)
    assert sft_run.summary()["health"] == {"alerts": [], "stopped_on_fatal": None}
