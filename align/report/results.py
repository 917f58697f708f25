"""The report's blocks for results computed after training: `align eval` (models, judge, baselines, charts, replies)
and `align probe` (how often a reward model prefers a degraded reply). Read generically, so a section a result file
lacks is left out and a key added later still shows."""

from __future__ import annotations

from typing import Any

from align.report import figures, samples
from align.report.collect import EvalRun, Probe
from align.report.markup import (
    badge,
    code,
    interval_of,
    is_interval_key,
    measured,
    note,
    number,
    table,
    text,
    with_interval,
)

BASELINES_NOTE = ('<p class="sub">Each way of ranking the same preference pairs (ties count 0.5). One ranking beats '
                  "another only when its 95% interval lies wholly above the other's.</p>")
PER_SAMPLE = "per_sample"
"""eval.json's per-reply lists (drawn in its charts, not tabled)."""


def eval_block(run: EvalRun, shown_samples: int) -> str:
    report = run.report
    parts = [f'<p class="sub">{code(run.dir)}</p>', eval_setup(report), models_table(report)]
    ranked = report.get("baselines")
    parts.append("<h4>Pair accuracy beside its baselines</h4>" + BASELINES_NOTE + baselines_block(ranked)
                 if isinstance(ranked, dict) and ranked else note(
                     "No baselines in this eval (eval.json has no \"baselines\" section)."))
    if run.charts:
        parts.append('<div class="figs">' + "".join(
            f'<figure><figcaption>{text(path.stem)}</figcaption><img alt="{text(path.stem)}" '
            f'src="{figures.png_file(path)}"></figure>' for path in run.charts) + "</div>")
    else:
        parts.append(note("No charts in this eval dir."))
    parts.append("<h4>Replies side by side</h4>")
    parts.append(samples.side_by_side(list(run.samples.items()), shown_samples)
                 if run.samples else note("No samples.jsonl in this eval dir."))
    return "".join(parts)


def eval_setup(report: dict[str, Any]) -> str:
    items = []
    data = report.get("data") or {}
    if data:
        items.append(f"data {code(data.get('path', '?'))} ({text(data.get('format', '?'))}): "
                     f"{number(data.get('prompts'))} prompts, {number(data.get('pairs'))} preference pairs")
    settings = report.get("settings") or {}
    if settings:
        items.append("settings: " + ", ".join(f"{text(k)} {number(v)}" for k, v in settings.items()))
    judge = report.get("judge") or {}
    if judge:
        on_pairs = judge.get("pairs") or {}
        scored = [f"{text(k)} {with_interval(v, interval_of(on_pairs, k))}" for k, v in on_pairs.items()
                  if not is_interval_key(on_pairs, k)]
        items.append(f"judge {code(judge.get('spec', '?'))}" + ("; on the pairs: " + ", ".join(scored) if scored else ""))
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>" if items else ""


def models_table(report: dict[str, Any]) -> str:
    """One column per model (the reference first), one row per metric of each section (generation, pairs, ...);
    a metric with an interval beside it (win_rate and win_rate_ci) shows both in one cell."""
    reference = report.get("reference")
    columns = ([(f"{reference.get('name', 'reference')} (reference)", reference)] if reference else []) + [
        (str(policy.get("name", "?")), policy) for policy in report.get("policies") or []]
    if not columns:
        return note("eval.json names no models.")
    sections: dict[str, list[str]] = {}
    for _, model in columns:
        for section, values in model.items():
            if section == PER_SAMPLE or not isinstance(values, dict):
                continue
            keys = sections.setdefault(section, [])
            keys += [k for k in values if k not in keys and not is_interval_key(values, k)]
    rows = []
    for section, keys in sections.items():
        rows.append([f'<span class="section">{text(section)}</span>'] + [""] * len(columns))
        for key in keys:
            cells = []
            for _, model in columns:
                values = model.get(section) or {}
                cells.append(with_interval(values[key], interval_of(values, key)) if key in values else "–")
            rows.append([text(key)] + cells)
    return table(["metric", *[name for name, _ in columns]], rows, align="l" + "r" * len(columns))


def baselines_block(baselines: Any) -> str:
    """Accuracy tables with intervals: {ranking: {accuracy, ci, n}}, or per source file {source: {ranking: ...}}
    (eval.json's "baselines", a reward stage's summary.json "held_out" accuracy)."""
    flat = all(isinstance(v, dict) and "accuracy" in v for v in baselines.values())
    groups = {"all pairs": baselines} if flat else {k: v for k, v in baselines.items() if isinstance(v, dict)}
    parts = []
    for group, rankings in groups.items():
        extra = sorted({k for row in rankings.values() if isinstance(row, dict) for k in row
                        if k not in ("accuracy", "ci", "interval", "n")})
        rows = [[text(name), measured(row), number(row.get("n")), *[number(row.get(k)) for k in extra]]
                for name, row in rankings.items() if isinstance(row, dict)]
        parts.append(f"<p><b>{text(group)}</b></p>")
        parts.append(table(["ranking", "accuracy [95% interval]", "n", *extra], rows, align="lrr" + "l" * len(extra)))
    return "".join(parts)


def probe_block(probe: Probe) -> str:
    result = probe.result
    passed = result.get("passed")
    verdict = badge("passed", "ok") if passed else badge("failed", "bad") if passed is False else ""
    threshold = result.get("threshold")
    head = (f"<p>{verdict} reward model {code(result.get('reward_model', '?'))}, {number(result.get('pairs'))} "
            f"replies; a variant fails when the degraded reply outscores the original in more than "
            f"{number(threshold)} of cases. Worst: {text(result.get('worst') or '–')}. "
            f'<span class="sub">{code(probe.path)}</span></p>')
    variants = result.get("variants") or {}
    if not variants:
        return head + note("probe.json lists no variants.")
    rows = []
    for name, v in sorted(variants.items(), key=lambda item: -float(item[1].get("win_rate", 0))):
        fails = isinstance(threshold, (int, float)) and float(v.get("win_rate", 0)) > threshold
        rows.append([text(name), number(v.get("n")), with_interval(v.get("win_rate"), v.get("ci")),
                     number(v.get("mean_margin")), badge("FAIL", "bad") if fails else badge("ok", "ok")])
    return head + table(["variant", "n", "degraded scored higher [95% interval]", "mean score change", ""], rows,
                        align="lrrrl")
