"""Layer freezing with gradual unfreezing, and early stopping with the best checkpoint kept."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import CONVERSATIONS, messages
from transformers import TrainerCallback

from align import config, stages
from align.errors import ConfigError
from align.stages import trainer
from align.stages.sft import SFTConfig


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": messages(t)}) + "\n" for t in CONVERSATIONS * 4))
    return path


def cfg_for(tmp_path, model_dir, data, *overrides):
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(data)]},
            "train": {"output_dir": str(tmp_path / "out"), "batch_size": 2, "max_length": 64, "learning_rate": 1e-2,
                      "lr_scheduler": "constant", "num_threads": 1, "save_total_limit": 20}}
    return config.load_config(SFTConfig, None, list(overrides), base=base)


def group(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_blocks_stay_bit_identical_then_move_after_thawing(tmp_path, tiny_model_dir, data):
    cfg = cfg_for(tmp_path, tiny_model_dir, data, "train.max_steps=8", "train.save_steps=2",
                  "model.freeze.first_layers=2", "model.freeze.embeddings=true", "model.freeze.unfreeze_every_steps=2")
    result = stages.run("sft", cfg)
    init = load_file(str(tiny_model_dir / "model.safetensors"))
    ckpt = {s: load_file(str(result.output_dir / f"checkpoint-{s}" / "model.safetensors")) for s in (2, 4, 6, 8)}
    block0, block1, embed = "model.layers.0.", "model.layers.1.", "model.embed_tokens."

    # Steps 1-2: everything frozen but the final norm and the (untied) output head.
    assert same(group(init, block0), group(ckpt[2], block0))
    assert same(group(init, block1), group(ckpt[2], block1))
    assert same(group(init, embed), group(ckpt[2], embed))
    assert not torch.equal(init["lm_head.weight"], ckpt[2]["lm_head.weight"])
    # Thawed after step 2: the highest block moves, the lower block and embeddings still do not.
    assert not same(group(ckpt[2], block1), group(ckpt[4], block1))
    assert same(group(init, block0), group(ckpt[4], block0))
    # After step 4 block 0 thaws; after step 6 the embeddings.
    assert not same(group(ckpt[4], block0), group(ckpt[6], block0))
    assert same(group(init, embed), group(ckpt[6], embed))
    assert not same(group(ckpt[6], embed), group(ckpt[8], embed))

    phases = json.loads((result.output_dir / "summary.json").read_text())["freeze_phases"]
    assert [p["step"] for p in phases] == [0, 2, 4, 6]
    assert phases[0]["trainable"] < phases[1]["trainable"] < phases[2]["trainable"] < phases[3]["trainable"]
    assert phases[-1]["trainable"] == sum(v.numel() for v in init.values())


def test_freezing_with_lora_is_refused(tmp_path, tiny_model_dir, data):
    with pytest.raises(ConfigError, match="freeze: LoRA already keeps every base weight frozen"):
        cfg_for(tmp_path, tiny_model_dir, data, "model.lora.enabled=true", "model.freeze.first_layers=1")


def test_early_stopping_on_synthetic_curve_keeps_best_checkpoint(tmp_path, tiny_model_dir, data, monkeypatch):
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
    cfg = cfg_for(tmp_path, tiny_model_dir, data, "train.max_steps=8", "train.eval_steps=1", "train.save_steps=1",
                  "data.eval_fraction=0.2", "train.early_stopping.enabled=true", "train.early_stopping.patience=2")
    result = stages.run("sft", cfg)
    out = result.output_dir
    assert result.metrics["steps"] == 4, "evals at steps 3 and 4 did not improve on step 2: stop after 4"
    stopping = json.loads((out / "summary.json").read_text())["stopping"]
    assert stopping["best_checkpoint"].endswith("checkpoint-2") and stopping["best_metric"] == 2.0
    assert "early stopping" in stopping["reason"]
    assert (out / "checkpoint-2" / "BEST").is_file()
    final, best = load_file(str(out / "model.safetensors")), load_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert same(final, best), "the final model is the best checkpoint"


def test_early_stopping_needs_periodic_eval():
    with pytest.raises(ConfigError, match="early_stopping.enabled: needs periodic evaluation"):
        config.load_config(SFTConfig, None, ["model.name_or_path=m", "data.train=[a]", "train.output_dir=o",
                                             "train.early_stopping.enabled=true"])
