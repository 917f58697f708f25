"""Rank preference pairs every way an accuracy should be compared against, as per-pair outcomes (1 / 0.5 / 0):
the model being judged, the length heuristics, and the starting policy's own log-prob margin (summed and per token).
align.eval.baselines turns them into accuracies with intervals."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from align.eval import baselines, scoring

log = logging.getLogger(__name__)

LONGER = "longer reply"
SHORTER = "shorter reply"
POLICY_SUM = "starting policy log-prob margin"
POLICY_MEAN = "starting policy per-token log-prob margin"


def length_rankings(pairs: Sequence[dict]) -> dict[str, list[float]]:
    return {LONGER: baselines.length_outcomes(pairs, longer=True),
            SHORTER: baselines.length_outcomes(pairs, longer=False)}


def policy_rankings(model, tokenizer, pairs: Sequence[dict], batch_size: int) -> dict[str, list[float]]:
    """The causal LM's implicit ranking: which reply it finds more likely, in total and per token."""
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = (scoring.reply_logps_and_lengths(model, tokenizer, prompts, [p[side] for p in pairs],
                                                        batch_size) for side in ("chosen", "rejected"))
    return log_prob_rankings(chosen, rejected)


def log_prob_rankings(chosen: tuple[list[float], list[int]],
                      rejected: tuple[list[float], list[int]]) -> dict[str, list[float]]:
    """`policy_rankings` from (summed log-probs, token counts) of the chosen and of the rejected replies."""
    def per_token(sums_and_counts):
        return [s / max(1, n) for s, n in zip(*sums_and_counts, strict=True)]

    return {POLICY_SUM: baselines.outcomes(chosen[0], rejected[0]),
            POLICY_MEAN: baselines.outcomes(per_token(chosen), per_token(rejected))}


def table(pairs: Sequence[dict], origins: Sequence[str], model_rankings: dict[str, list[float]], *,
          starting_policy=None, tokenizer=None, batch_size: int = 8, seed: int = 0) -> dict[str, dict]:
    """Accuracy with a 95% interval of the model's rankings and of every baseline, per source (align.eval.baselines)."""
    from functools import partial

    from align.eval import metrics

    found = {**model_rankings, **length_rankings(pairs)}
    if starting_policy is not None:
        found.update(policy_rankings(starting_policy, tokenizer, pairs, batch_size))
    return baselines.table(found, origins, partial(metrics.bootstrap_ci, seed=seed))
