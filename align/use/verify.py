"""Check an export against the model it came from: load it back with a reader that shares no code with the writer
(transformers' `from_pretrained`, with `gguf_file=` for a GGUF) and compare next-token logits at every position of a
few fixed chat conversations, rendered with the source's chat template.

The rule, by the precision of the exported weights (both sides computed in fp32):
- fp32 / f32 and fp16 / f16: the largest logit difference is within a tolerance, and the greedy (argmax) token
  agrees at every position except ties: positions where the source's two best tokens are within twice that
  tolerance, so that logits within it may rank them either way (a random tiny model has such positions; it would
  otherwise fail an f16 export that is as close as f16 allows). The tolerance is RELATIVE_TOLERANCE times the largest
  source logit, or for f16 twice what rounding the source's own weights to fp16 costs, whichever is larger: no f16
  file can be closer than that rounding, and it can exceed the fixed bound (the quick start's DPO output, 2 steps per
  stage: rounding moves its logits by up to 0.76, its f16 GGUF by 0.65, against 0.01 x its largest logit = 0.43);
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
    """Distinct positions compared: a prefix two conversations share counts once."""
    greedy_agreement: float
    """Share of positions where exported and source model pick the same next token."""
    ties: int | None
    """Positions where the source's two best tokens are within twice the tolerance (None: no tolerance)."""
    greedy_agreement_outside_ties: float
    """greedy_agreement over the positions that are no ties (all positions where there is no tolerance)."""
    required_agreement: float
    """What greedy_agreement_outside_ties must reach."""
    max_abs_logit_diff: float
    logit_scale: float
    """The largest |logit| of the source model over all positions."""
    rounding_diff: float | None
    """f16: the max |logit difference| of the source with its weights rounded to fp16 and back (None otherwise)."""
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
        ties = (f", {self.greedy_agreement_outside_ties:.1%} outside {self.ties} ties"
                if self.ties else "")
        return (f"greedy token agrees at {self.greedy_agreement:.1%} of {self.positions} positions{ties} (required "
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
    device = next(source_model.parameters()).device
    model = model.to(device)
    rounded = _rounded_to_fp16(source_model) if precision in ("fp16", "f16") else None
    agrees, margins, diffs, scales, rounding_diffs = [], [], [], [], []
    seen: set[tuple[int, ...]] = set()
    with torch.no_grad():
        for row in ids:
            tokens = torch.tensor([row], device=device)
            expected = source_model(tokens).logits[0].float()
            got = model(tokens).logits[0].float()
            # A prefix shared with an earlier conversation (a template's default system prompt) has the same logits
            # there: count each position once, or one flip there would count once per conversation.
            prefixes = [tuple(row[:t + 1]) for t in range(len(row))]
            new = torch.tensor([prefix not in seen for prefix in prefixes], device=device)
            seen.update(prefixes)
            agrees.append((expected.argmax(-1) == got.argmax(-1))[new])
            best = expected.topk(2, dim=-1).values
            margins.append((best[:, 0] - best[:, 1])[new])
            diffs.append((expected - got).abs().max())
            scales.append(expected.abs().max())
            if rounded is not None:
                rounding_diffs.append((expected - rounded(tokens).logits[0].float()).abs().max())
    agree, margin = torch.cat(agrees), torch.cat(margins)
    max_diff, scale = float(max(diffs)), float(max(scales))
    exact = precision in RELATIVE_TOLERANCE
    rounding_diff = float(max(rounding_diffs)) if rounding_diffs else None
    tolerance = max(RELATIVE_TOLERANCE[precision] * scale, 2 * (rounding_diff or 0.0)) if exact else None
    contested = margin <= 2 * tolerance if exact else torch.zeros_like(agree)
    outside = agree[~contested]
    result = Verification(
        format=fmt, precision=precision, conversations=len(CONVERSATIONS), positions=len(agree),
        greedy_agreement=float(agree.float().mean()), ties=int(contested.sum()) if exact else None,
        greedy_agreement_outside_ties=float(outside.float().mean()) if len(outside) else 1.0,
        required_agreement=1.0 if exact else REQUIRED_AGREEMENT, max_abs_logit_diff=max_diff, logit_scale=scale,
        rounding_diff=rounding_diff, tolerance=tolerance, tokenizer_matches=same_ids,
        chat_template_matches=same_template)
    if not same_ids:
        result.problems.append("the exported tokenizer encodes the check conversations into other token ids")
    if not same_template:
        result.problems.append("the exported chat template differs from the source's")
    if result.greedy_agreement_outside_ties < result.required_agreement:
        where = "positions that are no ties" if exact else "positions"
        result.problems.append(f"the greedy token agrees at {result.greedy_agreement_outside_ties:.1%} of {where}, "
                               f"below the {result.required_agreement:.0%} required for {precision}")
    if result.tolerance is not None and max_diff > result.tolerance:
        basis = (f"{RELATIVE_TOLERANCE[precision]:g} x the largest logit" if tolerance > 2 * (rounding_diff or 0.0)
                 else f"twice the {rounding_diff:.3g} that rounding the source's weights to fp16 costs")
        result.problems.append(f"max |logit difference| {max_diff:.3g} exceeds the tolerance {result.tolerance:.3g} "
                               f"({basis}) for {precision}")
    log.info("%s %s export: %s", fmt, precision, result.summary())
    return result


def _rounded_to_fp16(model):
    """A copy of `model` whose floating-point weights went through fp16 and back: the closest an f16 file can be."""
    import copy

    import torch

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in [*rounded.parameters(), *rounded.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().to(tensor.dtype))
    return rounded.eval()
