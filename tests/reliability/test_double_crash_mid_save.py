"""Two crashes while writing the same checkpoint: each resume sets the half-written checkpoint aside (the newest
replaces the older copy), and once the run has saved past it the copy is removed; complete checkpoints stay."""

from __future__ import annotations

import json
import logging

from tiny import CONVERSATIONS, messages

from align import config, rundir, stages
from align.sections import TrainConfig
from align.stages.sft import SFTConfig


def half_written(out, step: int, content: str):
    """A checkpoint cut off mid-write: weights begun, no trainer_state.json (what marks it complete)."""
    path = rundir.checkpoint_dir(out, step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text(content)
    return path


def complete(out, step: int):
    path = rundir.checkpoint_dir(out, step)
    path.mkdir(parents=True)
    (path / rundir.TRAINER_STATE_FILE).write_text("{}")
    return path


def test_the_same_checkpoint_cut_off_twice_resumes_both_times(tmp_path, caplog):
    out = tmp_path / "out"
    two = complete(out, 2)
    resume = TrainConfig(output_dir=str(out), resume=True)
    half_written(out, 4, "first crash")
    assert rundir.prepare_output_dir(resume) == str(two)
    half_written(out, 4, "second crash")
    assert rundir.prepare_output_dir(resume) == str(two)
    aside = out / "incomplete-checkpoint-4"
    assert (aside / "model.safetensors").read_text() == "second crash", "the newest partial write is kept"

    # The run has since saved past step 4: the partial copy goes, with a log line; complete checkpoints stay.
    four, six = complete(out, 4), complete(out, 6)
    with caplog.at_level(logging.INFO, logger="align.rundir"):
        assert rundir.prepare_output_dir(resume) == str(six)
    assert not aside.exists() and "incomplete-checkpoint-4" in caplog.text
    assert sorted(path.name for path in out.iterdir()) == [two.name, four.name, six.name]


def test_sft_resumes_after_two_crashes_writing_the_same_checkpoint(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in CONVERSATIONS))

    def make(steps: int, *overrides: str) -> SFTConfig:
        base = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(data)]},
                "train": {"output_dir": str(tmp_path / "out"), "max_steps": steps, "batch_size": 2,
                          "learning_rate": 1e-2, "max_length": 64, "save_steps": 2, "save_total_limit": 3, "num_threads": 1}}
        return config.load_config(SFTConfig, None, list(overrides), base=base)

    stages.run("sft", make(2))
    out = tmp_path / "out"
    for crash in ("first crash", "second crash"):
        half_written(out, 4, crash)
        assert rundir.prepare_output_dir(make(4, "train.resume=true").train) == str(out / "checkpoint-2")
    half_written(out, 4, "third crash")
    resumed = stages.run("sft", make(6, "train.resume=true"))
    assert resumed.metrics["steps"] == 6
    assert rundir.checkpoints(out) == ([out / "checkpoint-2", out / "checkpoint-4", out / "checkpoint-6"], [])
    assert (out / "incomplete-checkpoint-4" / "model.safetensors").read_text() == "third crash"
