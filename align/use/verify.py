"""Check an export against the model it came from: load it back with a reader that shares no code with the writer
(transformers' `from_pretrained`, with `gguf_file=` for a GGUF) and compare next-token logits at every position of a
few fixed chat conversations, rendered with the source's chat template.

The rule, by the precision of the exported weights (both sides computed in fp32):
- fp32 / f32 and fp16 / f16: the greedy (argmax) token agrees at every position, and the largest logit difference is
  within RELATIVE_TOLERANCE times the largest source logit;
- bf16 and q8_0 (8 significant bits or fewer per weight): the greedy token agrees at >= 95% of positions.
The exported tokenizer must also turn the conversations into the same token ids, with the same chat template.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Write a short poem about the sea."},
     {"role": "assistant", "content": "Grey waves fold over,\nthe tide keeps its old promise."}],
    [{"role": "user", "content": "Name three prime numbers."},
     {"role": "assistant", "content": "2, 3 and 5."},
     {"role": "user", "content": "And the next one?"},
     {"role": "assistant", "content": "7."}],
    [{"role": "user", "content": "How do I boil an egg?"},
     {"role": "assistant", "content": "Put the egg in a pot of cold water, bring it to a boil, then let it simmer for "
                                      "about nine minutes. Cool it in cold water before you peel it."}],
    [{"role": "user", "content": "Translate 'thank you' into French and Spanish."},
     {"role": "assistant", "content": "In French it is 'merci', and in Spanish it is 'gracias'."}],
    [{"role": "user", "content": "Why is the sky blue?"},
     {"role": "assistant", "content": "Sunlight is scattered by the molecules of the air, and blue light, which has a "
                                      "shorter wavelength, is scattered much more than red light, so the sky looks "
                                      "blue from every direction."}],
]
"""The fixed chat prompts every export is checked on."""

RELATIVE_TOLERANCE = {"fp32": 1e-4, "f32": 1e-4, "fp16": 1e-2, "f16": 1e-2}
"""Largest allowed |logit difference| / largest |source logit|, for the precisions that must agree everywhere."""
REQUIRED_AGREEMENT = 0.95
"""The share of positions whose greedy token must agree for bf16 and q8_0."""


@dataclass
class Verification:
    """How an export compares with its source; `problems` empty means it passed."""

    format: str
    precision: str
    conversations: int
    positions: int
    greedy_agreement: float
    """Share of positions where exported and source model pick the same next token."""
    required_agreement: float
    max_abs_logit_diff: float
    logit_scale: float
    """The largest |logit| of the source model over all positions."""
    tolerance: float | None
    """The allowed max_abs_logit_diff (None: not checked at this precision)."""
    tokenizer_matches: bool
    chat_template_matches: bool
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        tolerance = f" (tolerance {self.tolerance:.3g})" if self.tolerance is not None else ""
        return (f"greedy token agrees at {self.greedy_agreement:.1%} of {self.positions} positions (required "
                f"{self.required_agreement:.0%}); max |logit difference| {self.max_abs_logit_diff:.3g}{tolerance}, "
                f"largest logit {self.logit_scale:.3g}")


def reload(path: Path, fmt: str):
    """(tokenizer, fp32 causal LM) of an export, read back by transformers alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, extra = (path.parent, {"gguf_file": path.name}) if fmt == "gguf" else (path, {})
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    return tokenizer, model.eval()


def verify(source_model, source_tokenizer, path: Path, fmt: str, precision: str) -> Verification:
    """Load the export at `path` (a checkpoint dir, or a .gguf file) back and compare it with its source."""
    tokenizer, model = reload(path, fmt)
    return compare(source_model, source_tokenizer, model, tokenizer, fmt=fmt, precision=precision)


def compare(source_model, source_tokenizer, model, tokenizer, *, fmt: str, precision: str) -> Verification:
    """Next-token logits of `model` against `source_model` on CONVERSATIONS, judged by the rule of `precision`."""
    import torch

    texts = [source_tokenizer.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS]
    ids = [source_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    same_ids = all(tokenizer(text, add_special_tokens=False)["input_ids"] == row for text, row in zip(texts, ids))
    same_template = tokenizer.chat_template == source_tokenizer.chat_template
    agree = positions = 0
    max_diff = scale = 0.0
    device = next(source_model.parameters()).device
    model = model.to(device)
    with torch.no_grad():
        for row in ids:
            tokens = torch.tensor([row], device=device)
            expected = source_model(tokens).logits[0].float()
            got = model(tokens).logits[0].float()
            agree += int((expected.argmax(-1) == got.argmax(-1)).sum())
            positions += len(row)
            max_diff = max(max_diff, float((expected - got).abs().max()))
            scale = max(scale, float(expected.abs().max()))
    exact = precision in RELATIVE_TOLERANCE
    result = Verification(
        format=fmt, precision=precision, conversations=len(CONVERSATIONS), positions=positions,
        greedy_agreement=agree / positions, required_agreement=1.0 if exact else REQUIRED_AGREEMENT,
        max_abs_logit_diff=max_diff, logit_scale=scale,
        tolerance=RELATIVE_TOLERANCE[precision] * scale if exact else None,
        tokenizer_matches=same_ids, chat_template_matches=same_template)
    if not same_ids:
        result.problems.append("the exported tokenizer encodes the check conversations into other token ids")
    if not same_template:
        result.problems.append("the exported chat template differs from the source's")
    if result.greedy_agreement < result.required_agreement:
        result.problems.append(f"the greedy token agrees at {result.greedy_agreement:.1%} of positions, below the "
                               f"{result.required_agreement:.0%} required for {precision}")
    if result.tolerance is not None and max_diff > result.tolerance:
        result.problems.append(f"max |logit difference| {max_diff:.3g} exceeds the tolerance {result.tolerance:.3g} "
                               f"({RELATIVE_TOLERANCE[precision]:g} x the largest logit) for {precision}")
    log.info("%s %s export: %s", fmt, precision, result.summary())
    return result
