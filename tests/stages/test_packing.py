"""Packed SFT gives the same loss as unpacked on the same tokens: no attention across packed examples."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import CONVERSATIONS, build_tiny_tokenizer, llama_config, messages

from align import chat, config, stages
from align.observe import tracking
from align.stages import packing
from align.stages.sft import SFTConfig


@pytest.fixture(scope="module")
def tokenized():
    tokenizer = build_tiny_tokenizer()
    rows = [chat.tokenize_messages(tokenizer, messages(t), assistant_only=False) for t in CONVERSATIONS]
    return tokenizer, rows


def summed_loss(model, input_ids, labels, **kwargs):
    """Sum of next-token losses over labelled positions (the model's mean times the count it averaged over)."""
    out = model(input_ids=input_ids, labels=labels, **kwargs)
    counted = (labels[:, 1:] != -100).sum()
    return out.loss * counted, counted


def test_pack_keeps_every_token_within_max_length(tokenized):
    _, rows = tokenized
    packed = packing.pack(rows, max_length=48)
    assert all(len(p["input_ids"]) <= 48 for p in packed)
    assert sorted(sum(p["seq_lengths"]) for p in packed) == sorted(len(p["input_ids"]) for p in packed)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(r["input_ids"]) for r in rows)
    assert len(packed) < len(rows)
    assert packed == packing.pack(rows, max_length=48)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(tokenized, attn):
    tokenizer, rows = tokenized
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(tokenizer)).eval()
    model.config._attn_implementation = attn

    total, count = 0.0, 0
    for r in rows:
        loss, n = summed_loss(model, torch.tensor([r["input_ids"]]), torch.tensor([r["labels"]]))
        total, count = total + loss.item(), count + int(n)

    packed = packing.pack(rows, max_length=48)
    batch = packing.PackedCollator(pad_token_id=tokenizer.pad_token_id)(packed)
    loss, n = summed_loss(model, batch["input_ids"], batch["labels"], position_ids=batch["position_ids"],
                          attention_mask=batch["attention_mask"])
    assert int(n) == count
    assert loss.item() == pytest.approx(total, rel=1e-5)

    # Without the block mask the same packed tokens give a different loss: the test can fail.
    naive, _ = summed_loss(model, batch["input_ids"], batch["labels"], position_ids=batch["position_ids"])
    assert abs(naive.item() - total) > 1e-3


def test_sft_stage_with_packing(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": messages(t)}) + "\n" for t in CONVERSATIONS * 2))
    base = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(data)]},
            "train": {"output_dir": str(tmp_path / "out"), "epochs": 1, "batch_size": 2, "max_length": 64,
                      "num_threads": 1}}
    cfg = config.load_config(SFTConfig, None, ["packing=true"], base=base)
    result = stages.run("sft", cfg)
    # 10 examples of ~20 tokens pack into a few 64-token rows: fewer optimizer steps than 5 unpacked batches.
    assert 1 <= result.metrics["steps"] < 5
    logged = [m for m in tracking.read_metrics(result.output_dir) if "num_tokens" in m]
    tokenizer = build_tiny_tokenizer()
    real = sum(len(chat.tokenize_messages(tokenizer, messages(t))["input_ids"]) for t in CONVERSATIONS * 2)
    assert logged[-1]["num_tokens"] == real
