"""Layer freezing with gradual unfreezing (ULMFiT style): frozen blocks stay bit-identical until they thaw."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from align import stages
from align.errors import ConfigError


def group(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_blocks_stay_bit_identical_then_move_after_thawing(tiny_model_dir, long_sft_cfg):
    cfg = long_sft_cfg("train.max_steps=8", "train.save_steps=2", "model.freeze.first_layers=2",
                       "model.freeze.embeddings=true", "model.freeze.unfreeze_every_steps=2")
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


def test_freezing_with_lora_is_refused(long_sft_cfg):
    with pytest.raises(ConfigError, match="freeze: LoRA already keeps every base weight frozen"):
        long_sft_cfg("model.lora.enabled=true", "model.freeze.first_layers=1")
