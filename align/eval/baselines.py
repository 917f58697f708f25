"""The baselines a preference accuracy must beat, on the same pairs: the length heuristics (the longer reply wins,
the shorter reply wins) and the starting policy's own ranking (its log-prob margin of chosen over rejected, summed
and per token). Outcomes are per pair, 1 / 0.5 (tie) / 0; accuracy is their mean, with a 95% interval, per source
file when the pairs come from several (helpful and harmless pairs reward opposite habits, so one pooled number hides
both). A model beats a baseline only when its interval lies wholly above the baseline's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Interval = Callable[[list[float]], tuple[float, float]]
ALL = "all"
"""The row of a table that pools every source."""


def outcomes(chosen: Sequence[float], rejected: Sequence[float]) -> list[float]:
    """Per pair: 1 where chosen scores higher, 0.5 on a tie, 0 where rejected does."""
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]


def reply_text(reply: list[dict]) -> str:
    return "\n".join(message["content"] for message in reply)


def length_outcomes(pairs: Sequence[dict], *, longer: bool) -> list[float]:
    """The length heuristic's outcome per pair: the reply with more characters (or fewer) is taken as chosen."""
    lengths = [(len(reply_text(p["chosen"])), len(reply_text(p["rejected"]))) for p in pairs]
    sign = 1 if longer else -1
    return outcomes([sign * c for c, _ in lengths], [sign * r for _, r in lengths])


def accuracy(values: list[float], interval: Interval) -> dict[str, Any]:
    low, high = interval(values)
    return {"accuracy": sum(values) / len(values), "ci": [low, high], "n": len(values)}


def table(rankings: dict[str, list[float]], sources: Sequence[str], interval: Interval) -> dict[str, dict[str, Any]]:
    """{source or "all": {ranking: accuracy with interval}}; per-source rows only when there are several sources."""
    groups = {ALL: list(range(len(sources)))}
    if len(set(sources)) > 1:
        for i, source in enumerate(sources):
            groups.setdefault(source, []).append(i)
    return {group: {name: accuracy([values[i] for i in rows], interval) for name, values in rankings.items()}
            for group, rows in groups.items()}


def verdict(model: dict[str, Any], baseline: dict[str, Any]) -> str:
    """"above" or "below" when the two intervals do not overlap, else "overlaps" (no claim either way)."""
    if model["ci"][0] > baseline["ci"][1]:
        return "above"
    if model["ci"][1] < baseline["ci"][0]:
        return "below"
    return "overlaps"


def markdown(tables: dict[str, dict[str, dict[str, Any]]], models: Sequence[str]) -> str:
    """One table per source: each ranking's accuracy and interval, and where each of `models` stands against it."""
    lines = []
    for group, rows in tables.items():
        shown = [m for m in models if m in rows]
        lines += [f"**{group}** ({next(iter(rows.values()))['n']} pairs)", "",
                  "| ranking | accuracy | 95% interval |" + "".join(f" {m} is |" for m in shown),
                  "|---|---:|---|" + "---|" * len(shown)]
        for name, row in rows.items():
            against = "".join(f" {verdict(rows[m], row) if m != name else ''} |" for m in shown)
            lines.append(f"| {name} | {row['accuracy']:.3f} | [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}] |{against}")
        lines.append("")
    return "\n".join(lines)
