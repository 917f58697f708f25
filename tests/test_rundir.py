"""The run-dir contract without training: which checkpoints count as complete, the resume/overwrite rules, and
summary.json."""

from __future__ import annotations

import json

import pytest

from align import rundir
from align.errors import ConfigError
from align.observe.health import Alert
from align.sections import TrainConfig


def checkpoint(out, step: int, complete: bool = True):
    path = rundir.checkpoint_dir(out, step)
    path.mkdir(parents=True)
    if complete:
        (path / rundir.TRAINER_STATE_FILE).write_text("{}")
    return path


def test_checkpoints_are_ordered_by_step_and_complete_once_they_hold_the_trainer_state(tmp_path):
    ten, two, nine = checkpoint(tmp_path, 10), checkpoint(tmp_path, 2), checkpoint(tmp_path, 9, complete=False)
    (tmp_path / "checkpoint-x").mkdir()
    assert rundir.checkpoints(tmp_path) == ([two, ten], [nine])
    assert rundir.checkpoints(tmp_path / "missing") == ([], [])


def test_a_finished_run_is_refused_overwritten_or_resumed(tmp_path):
    out = tmp_path / "out"
    last = checkpoint(out, 4)
    checkpoint(out, 5, complete=False)
    for name in (rundir.SUMMARY, rundir.METRICS_FILE, rundir.COMPLETIONS_FILE, rundir.SAMPLES_FILE):
        (out / name).write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run \\(finished\\)"):
        rundir.prepare_output_dir(TrainConfig(output_dir=str(out)))
    assert rundir.prepare_output_dir(TrainConfig(output_dir=str(out), resume=True)) == str(last)
    assert (out / "incomplete-checkpoint-5").is_dir(), "an incomplete checkpoint is moved aside"
    assert rundir.prepare_output_dir(TrainConfig(output_dir=str(out), overwrite=True)) is None
    assert sorted(path.name for path in out.iterdir()) == ["incomplete-checkpoint-5"]


def test_write_summary_and_the_stopping_entry(tmp_path):
    checkpoint(tmp_path, 3)
    alert = Alert(name="non_finite_loss", step=4, message="loss = nan", severity="fatal")
    path = rundir.write_summary(tmp_path, "sft", {"steps": 4}, data={"rows": 2},
                                stopping=rundir.stopped_by(alert, tmp_path))
    summary = json.loads(path.read_text())
    assert list(summary) == ["stage", "finished_at", "metrics", "data", "stopping"]
    assert summary["stage"] == "sft" and summary["metrics"] == {"steps": 4}
    assert summary["stopping"]["reason"] == "fatal health alert non_finite_loss at step 4: loss = nan"
    assert summary["stopping"]["last_checkpoint"] == str(tmp_path / "checkpoint-3")
