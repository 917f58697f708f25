"""Pack tokenized examples into full-length sequences without letting them attend to each other.

TRL's padding-free packing relies on varlen (flash) attention kernels to keep packed examples apart. With sdpa or
eager attention, which is what CPUs and many GPUs run, transformers does not split a packed row by its
position_ids, so every example silently attends to the ones packed before it. We pack ourselves and give sdpa and
eager a block-diagonal causal 4D mask; flash attention gets TRL's padding-free batch (cu_seq_lens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from align.chat import IGNORE_INDEX

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def pack(rows: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Best-fit-decreasing packing of `input_ids`/`labels` rows into bins of at most max_length tokens.

    Deterministic for a given input order. Each packed row records `seq_lengths`, the lengths of its examples.
    """
    bins: list[dict[str, Any]] = []
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    for i in order:
        n = len(rows[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"example of {n} tokens exceeds max_length={max_length}; truncate before packing")
        best = min((bin_ for bin_ in bins if bin_["free"] >= n), key=lambda bin_: bin_["free"], default=None)
        if best is None:
            best = {"free": max_length, "members": []}
            bins.append(best)
        best["members"].append(i)
        best["free"] -= n
    packed = []
    for bin_ in bins:
        members = sorted(bin_["members"])
        packed.append({
            "input_ids": [t for i in members for t in rows[i]["input_ids"]],
            "labels": [t for i in members for t in rows[i]["labels"]],
            "seq_lengths": [len(rows[i]["input_ids"]) for i in members],
        })
    return packed


def block_causal_mask(seq_lengths: list[list[int]], total: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask: 0 where a token may attend (same example, not in the future), min elsewhere.

    Padding positions form their own block so their softmax stays finite; their labels are ignored anyway.
    """
    segments = torch.full((len(seq_lengths), total), -1, dtype=torch.long)
    for row, lengths in enumerate(seq_lengths):
        start = 0
        for segment, length in enumerate(lengths):
            segments[row, start:start + length] = segment
            start += length
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.tril(torch.ones(total, total, dtype=torch.bool))
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def position_ids(seq_lengths: list[list[int]], total: int) -> torch.Tensor:
    """Positions restart at 0 for every packed example, as if each were alone (matters for RoPE)."""
    out = torch.zeros(len(seq_lengths), total, dtype=torch.long)
    for row, lengths in enumerate(seq_lengths):
        start = 0
        for length in lengths:
            out[row, start:start + length] = torch.arange(length)
            start += length
    return out


@dataclass
class PackedCollator:
    """Batches packed rows for sdpa/eager attention: right padding, restarted positions, block-diagonal mask."""

    pad_token_id: int
    dtype: torch.dtype = torch.float32

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        total = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), total), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), total), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[row, :n] = torch.tensor(e["input_ids"])
            labels[row, :n] = torch.tensor(e["labels"])
        lengths = [list(e["seq_lengths"]) for e in examples]
        positions = position_ids(lengths, total)
        # The first token of a packed example must not be predicted from the end of the previous one.
        labels[(positions == 0) & (torch.arange(total) > 0)] = IGNORE_INDEX
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": positions,
            "attention_mask": block_causal_mask(lengths, total, self.dtype),
        }


def packed_sft_trainer(trl_module):
    """trl.SFTTrainer whose `num_tokens` metric counts real tokens rather than summing our 4D mask."""

    class PackedSFTTrainer(trl_module.SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            before = self._total_train_tokens
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            if self._total_train_tokens != before:
                # Padding uses a dedicated special token that chat-rendered data does not contain.
                real = (inputs["input_ids"] != self.processing_class.pad_token_id).sum()
                self._total_train_tokens = before + int(self.accelerator.gather_for_metrics(real).sum().item())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return out

    return PackedSFTTrainer
