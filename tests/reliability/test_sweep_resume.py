"""A sweep interrupted inside a trial resumes that trial from its checkpoint when run again, and ranks it on the
whole run's figures (train_loss over every step, as an uninterrupted trial reports it)."""

from __future__ import annotations

import json

import pytest
import yaml
from faults import interrupt_at, logged_steps, stage_config, write_config

from align import cli


@pytest.mark.slow
def test_an_interrupted_trial_resumes_and_is_ranked_on_the_whole_run(tmp_path, tiny_model_dir, monkeypatch):
    base = write_config(tmp_path / "sft.yaml", stage_config(tmp_path, "sft", tiny_model_dir, tmp_path / "unused"))

    def sweep_yaml(name: str) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"stage": "sweep", "base": str(base), "run_dir": str(tmp_path / name),
                                        "metric": "train_loss", "parameters": {"train.learning_rate": [0.01]}}))
        return str(path)

    assert cli.main(["sweep", "--config", sweep_yaml("straight")]) == 0
    interrupt_at(monkeypatch, 3)
    assert cli.main(["sweep", "--config", sweep_yaml("interrupted")]) == 130
    assert cli.main(["sweep", "--config", sweep_yaml("interrupted")]) == 0
    (a,), (b,) = ([json.loads(p.read_text()) for p in (tmp_path / name).glob("trial-*/trial.json")]
                  for name in ("straight", "interrupted"))
    assert b["metric"] == pytest.approx(a["metric"], rel=1e-6)
    assert logged_steps(next((tmp_path / "interrupted").glob("trial-*"))) == [1, 2, 3, 4]
