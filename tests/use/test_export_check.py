"""The export check's rule on hand-made logits: f16 may flip the greedy token only where the source's two best tokens
tie within the tolerance; q8_0 needs the greedy token at >= 95% of positions; a different tokenizer fails."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny import build_tiny_tokenizer, llama_config

from align.use import verify


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits at position t are `row(t)` (4 tokens), whatever the input ids."""

    def __init__(self, row):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.row = row

    def forward(self, tokens):
        return SimpleNamespace(logits=torch.tensor([[self.row(t) for t in range(tokens.shape[1])]]))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def check(tokenizer, source_row, export_row, precision, export_tokenizer=None):
    return verify.compare(FixedLogits(source_row), tokenizer, FixedLogits(export_row), export_tokenizer or tokenizer,
                          fmt="gguf", precision=precision)


def test_f16_flip_at_a_tie_passes(tokenizer):
    """Source margin 0.001, tolerance 0.01 x largest logit 1.0: either order is within what f16 allows."""
    result = check(tokenizer, lambda t: [1.0, 0.999, 0.0, -1.0], lambda t: [0.999, 1.0, 0.0, -1.0], "f16")
    assert result.passed and result.greedy_agreement == 0.0 and result.ties == result.positions


def test_f16_flip_of_a_clear_winner_fails(tokenizer):
    """A clear winner (margin 0.03, more than twice the tolerance 0.01) flipped: both rules fail."""
    result = check(tokenizer, lambda t: [1.0, 0.97, 0.0, -1.0], lambda t: [0.98, 0.99, 0.0, -1.0], "f16")
    assert not result.passed and result.ties == 0 and result.greedy_agreement_outside_ties == 0.0
    assert any("of positions that are no ties, below the 100%" in p for p in result.problems)
    assert any("exceeds the tolerance" in p for p in result.problems)


@pytest.mark.parametrize(("every", "passed"), [(50, True), (10, False)])
def test_q8_0_needs_95_percent_of_greedy_tokens(tokenizer, every, passed):
    def exported(t):
        return [0.0, 1.0, 0.0, -1.0] if t % every == 0 else [1.0, 0.0, 0.0, -1.0]

    result = check(tokenizer, lambda t: [1.0, 0.0, 0.0, -1.0], exported, "q8_0")
    assert result.passed is passed and result.tolerance is None and result.ties is None


def test_a_tokenizer_that_encodes_differently_fails(tokenizer):
    other = build_tiny_tokenizer()
    other.add_tokens(["capital"])  # one more whole-word token: "capital" encodes to one id now
    result = check(tokenizer, lambda t: [1.0, 0.0, 0.0, 0.0], lambda t: [1.0, 0.0, 0.0, 0.0], "f32", other)
    assert not result.passed and not result.tokenizer_matches


def test_f16_tolerance_is_at_least_twice_what_rounding_the_source_to_fp16_costs(tokenizer):
    """A tiny model with fp32 random weights: its own weights rounded to fp16 are the closest any f16 export can be.
    That copy passes the f16 rule at exactly the rounding's cost, though it is far outside the fp32 tolerance."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    source = LlamaForCausalLM(llama_config(tokenizer)).eval()
    rounded = verify._rounded_to_fp16(source)
    assert all(not torch.equal(a, b) for a, b in zip(source.parameters(), rounded.parameters()) if a.dim() > 1)

    f16 = verify.compare(source, tokenizer, rounded, tokenizer, fmt="gguf", precision="f16")
    assert f16.passed and f16.max_abs_logit_diff == pytest.approx(f16.rounding_diff) and f16.rounding_diff > 0
    assert f16.tolerance == pytest.approx(max(0.01 * f16.logit_scale, 2 * f16.rounding_diff))
    f32 = verify.compare(source, tokenizer, rounded, tokenizer, fmt="gguf", precision="f32")
    assert f32.rounding_diff is None and not f32.passed
