"""Sampled replies side by side: one row per prompt, one column per stage, training step or evaluated model."""

from __future__ import annotations

from collections.abc import Sequence

from align.report.collect import Sample
from align.report.markup import note, number, text

STEP_COLUMNS = 4
"""Most training steps shown for one stage: the first, the last and evenly spaced ones between."""


def side_by_side(columns: Sequence[tuple[str, Sequence[Sample]]], limit: int) -> str:
    """A table of the replies to the same prompt in each column. Prompts that most columns share come first (then
    in the order they were sampled); at most `limit` rows."""
    replies: dict[str, dict[str, Sample]] = {}
    for name, rows in columns:
        for sample in rows:
            replies.setdefault(sample.prompt, {}).setdefault(name, sample)
    if not replies:
        return note("No sampled replies.")
    order = list(replies)
    prompts = sorted(order, key=lambda prompt: (-len(replies[prompt]), order.index(prompt)))[:limit]
    names = [name for name, _ in columns]
    head = "<th>prompt</th>" + "".join(f"<th>{text(name)}</th>" for name in names)
    body = "".join(
        f'<tr><td><div class="reply">{text(prompt)}</div></td>'
        + "".join(f"<td>{reply_cell(replies[prompt].get(name))}</td>" for name in names) + "</tr>"
        for prompt in prompts)
    shown = f"{len(prompts)} of {len(replies)} prompts" if len(replies) > len(prompts) else f"{len(prompts)} prompts"
    return (f'<table class="replies"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f'<p class="sub">{shown}.</p>')


def reply_cell(sample: Sample | None) -> str:
    if sample is None:
        return '<span class="sub">–</span>'
    reply = text(sample.completion) if sample.completion else '<span class="sub">(empty reply)</span>'
    about = meta(sample)
    return f'<div class="reply">{reply}</div>' + (f'<div class="meta">{about}</div>' if about else "")


def meta(sample: Sample) -> str:
    """The reply's length, whether it ended with EOS or repeats a 4-gram, and its score."""
    notes = sample.notes
    parts = []
    if "length" in notes:
        parts.append(f"{number(notes['length'])} tokens")
    if notes.get("eos") is False:
        parts.append("no EOS")
    if notes.get("repeated_ngram"):
        parts.append("repeats a 4-gram")
    for key in ("score", "judge_score"):
        if key in notes:
            parts.append(f"{key.replace('_', ' ')} {number(notes[key])}")
    return " · ".join(parts)


def by_step(rows: Sequence[Sample]) -> dict[int, list[Sample]]:
    steps: dict[int, list[Sample]] = {}
    for sample in rows:
        if sample.step is not None:
            steps.setdefault(sample.step, []).append(sample)
    return dict(sorted(steps.items()))


def across_steps(rows: Sequence[Sample], limit: int) -> str:
    """One stage's replies at its first and last sampling steps (and evenly spaced ones between)."""
    steps = by_step(rows)
    if not steps:
        return side_by_side([("reply", rows)], limit)
    keys = list(steps)
    count = min(STEP_COLUMNS, len(keys))
    picked = sorted({keys[round(i * (len(keys) - 1) / max(1, count - 1))] for i in range(count)})
    return side_by_side([(f"step {step}", steps[step]) for step in picked], limit)


def last_step(rows: Sequence[Sample]) -> list[Sample]:
    """The replies of the last sampling step (all rows when none records a step)."""
    steps = by_step(rows)
    return list(steps[max(steps)]) if steps else list(rows)
