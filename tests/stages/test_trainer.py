"""What the TRL stages share (align.stages.trainer): early stopping on the eval metric keeps the best checkpoint as
the final model, and needs periodic evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from align import config, stages
from align.errors import ConfigError
from align.stages import trainer
from align.stages.sft import SFTConfig


def test_early_stopping_on_synthetic_curve_keeps_best_checkpoint(long_sft_cfg, monkeypatch):
    curve = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0])

    class SyntheticEval(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics["eval_loss"] = next(curve)

    real_callbacks = trainer.trainer_callbacks

    def with_synthetic_curve(*args, **kwargs):
        found = real_callbacks(*args, **kwargs)
        found.callbacks.insert(0, SyntheticEval())
        return found

    monkeypatch.setattr(trainer, "trainer_callbacks", with_synthetic_curve)
    cfg = long_sft_cfg("train.max_steps=8", "train.eval_steps=1", "train.save_steps=1", "data.eval_fraction=0.2",
                       "train.early_stopping.enabled=true", "train.early_stopping.patience=2")
    result = stages.run("sft", cfg)
    out = result.output_dir
    assert result.metrics["steps"] == 4, "evals at steps 3 and 4 did not improve on step 2: stop after 4"
    stopping = json.loads((out / "summary.json").read_text())["stopping"]
    assert stopping["best_checkpoint"].endswith("checkpoint-2") and stopping["best_metric"] == 2.0
    assert "early stopping" in stopping["reason"]
    assert (out / "checkpoint-2" / "BEST").is_file()
    final, best = load_file(str(out / "model.safetensors")), load_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert all(torch.equal(final[k], best[k]) for k in final), "the final model is the best checkpoint"


def test_early_stopping_needs_periodic_eval():
    with pytest.raises(ConfigError, match="early_stopping.enabled: needs periodic evaluation"):
        config.load_config(SFTConfig, None, ["model.name_or_path=m", "data.train=[a]", "train.output_dir=o",
                                             "train.early_stopping.enabled=true"])
