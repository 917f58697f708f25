"""Resuming from a checkpoint that already holds the last step trains nothing more, when max_steps is not a whole
number of epochs: a stage killed after its last checkpoint but before summary.json finishes from that checkpoint, and
a finished run started again with train.resume=true finishes again on the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import CONVERSATIONS, messages

from align import config, rundir, stages
from align.observe import tracking
from align.stages.sft import SFTConfig


def make_cfg(tmp_path, model_dir, *overrides: str) -> SFTConfig:
    """5 conversations in batches of 2: 3 steps an epoch, so max_steps=4 ends inside the second epoch."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in CONVERSATIONS))
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(data)], "eval": [str(data)]},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "batch_size": 2, "learning_rate": 1e-2,
                      "max_length": 64, "save_steps": 2, "num_threads": 1, "lr_scheduler": "constant"}}
    return config.load_config(SFTConfig, None, list(overrides), base=base)


@pytest.mark.slow  # 2-4 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_resuming_from_the_last_step_does_not_train_again(tmp_path, tiny_model_dir):
    first = stages.run("sft", make_cfg(tmp_path, tiny_model_dir))
    out = first.output_dir
    trained = load_file(str(out / "model.safetensors"))

    def unchanged(path) -> bool:
        now = load_file(str(path))
        return all(torch.equal(trained[k], now[k]) for k in trained)

    # Killed after checkpoint-4 was written, before the final save and summary.json.
    for name in ("model.safetensors", rundir.SUMMARY):
        (out / name).unlink()
    finished = stages.run("sft", make_cfg(tmp_path, tiny_model_dir, "train.resume=true"))
    assert finished.metrics["steps"] == 4 and "eval_loss" in finished.metrics
    assert unchanged(out / "model.safetensors"), "the final model is checkpoint-4's weights"
    assert json.loads((out / rundir.SUMMARY).read_text())["metrics"]["steps"] == 4

    # A finished run started again with resume: still 4 steps, same weights, no step 5 anywhere.
    again = stages.run("sft", make_cfg(tmp_path, tiny_model_dir, "train.resume=true"))
    assert again.metrics["steps"] == 4
    assert unchanged(out / "model.safetensors")
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    logged = tracking.read_metrics(out)
    assert max(m["step"] for m in logged) == 4
    # The final evaluation is logged once: the rows a run logged after checkpoint-4 was written go on resume.
    assert sum("eval_loss" in m for m in logged) == 1 and sum("loss" in m for m in logged) == 4
