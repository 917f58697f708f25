"""A 2x2 sweep on a tiny model: four trials, a ranked table, and a re-run that skips them."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from tiny import CONVERSATIONS, messages

from align import cli, config, sweep


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_grid_sweep_runs_ranks_and_skips_finished(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": messages(t)}) + "\n" for t in CONVERSATIONS * 2))
    base = tmp_path / "sft.yaml"
    base.write_text(yaml.safe_dump({
        "stage": "sft", "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": [str(data)], "eval_fraction": 0.3},
        "train": {"output_dir": "unused", "max_steps": 2, "batch_size": 2, "max_length": 64, "num_threads": 1}}))
    sweep_yaml = tmp_path / "sweep.yaml"
    sweep_yaml.write_text(yaml.safe_dump({
        "stage": "sweep", "base": str(base), "run_dir": str(tmp_path / "sweep"),
        "parameters": {"train.learning_rate": [1e-4, 1e-2], "model.lora.rank": [2, 4]},
        "overrides": ["model.lora.enabled=true"], "metric": "eval_loss", "mode": "min"}))

    assert cli.main(["sweep", "--config", str(sweep_yaml)]) == 0
    rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))
    assert len(rows) == 4
    losses = [float(r["eval_loss"]) for r in rows]
    assert losses == sorted(losses)
    assert {(r["train.learning_rate"], r["model.lora.rank"]) for r in rows} == {
        ("0.0001", "2"), ("0.0001", "4"), ("0.01", "2"), ("0.01", "4")}
    for r in rows:
        trial_dir = tmp_path / "sweep" / r["trial"]
        resolved = config.read_yaml(trial_dir / "config.yaml")
        assert resolved["model"]["lora"]["rank"] == int(r["model.lora.rank"])
        assert resolved["tracking"]["group"] == "sweep"
    assert (tmp_path / "sweep" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rank | trial |" in (tmp_path / "sweep" / "results.md").read_text()

    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "sweep").glob("trial-*/summary.json")}
    assert cli.main(["sweep", "--config", str(sweep_yaml)]) == 0
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes, "finished trials are not run again"
    assert "4 finished trials" in capsys.readouterr().out


def test_random_search_is_seeded(tmp_path):
    base = tmp_path / "b.yaml"
    base.write_text("stage: sft\n")
    cfg = config.load_config(sweep.SweepConfig, None, [
        f"base={base}", "run_dir=r", "method=random", "num_trials=5", "seed=3",
        "parameters={train.learning_rate: {range: {min: 1.0e-6, max: 1.0e-3, log: true}}, beta: [0.1, 0.2]}"])
    first, again = sweep.trials(cfg), sweep.trials(cfg)
    assert [t.params for t in first] == [t.params for t in again]
    assert all(1e-6 <= t.params["train.learning_rate"] <= 1e-3 for t in first)
    assert len({t.params["train.learning_rate"] for t in first}) == 5
