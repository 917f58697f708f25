"""`align eval`'s outputs: eval.json, samples.jsonl, eval.md (a short report with one column per model) and the
comparison charts (PNG, drawn with align.observe.plots' figure helpers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align import generation
from align.eval import baselines
from align.observe.plots import panels, pyplot, save
from align.rundir import EVAL_FILE, EVAL_MARKDOWN_FILE, SAMPLES_FILE


def sample_rows(name: str, prompts: list[list[dict]], generated: generation.Generated,
                judge_scores: list[float] | None) -> list[dict]:
    """samples.jsonl rows: one per model and prompt."""
    rows = []
    for i, row in enumerate(generation.completion_rows(prompts, generated)):
        rows.append({"model": name, **row, **({"judge_score": judge_scores[i]} if judge_scores else {})})
    return rows


def write_outputs(out: Path, report: dict[str, Any], markdown: str, samples: list[dict]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / EVAL_FILE, out / EVAL_MARKDOWN_FILE, out / SAMPLES_FILE]
    files[0].write_text(json.dumps(report, indent=2), encoding="utf-8")
    files[1].write_text(markdown, encoding="utf-8")
    files[2].write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples), encoding="utf-8")
    return files


# (label, section, key): one table row each, shown when some column has the value.
TABLE_ROWS = (
    ("win rate vs reference", "generation", "win_rate"),
    ("KL to reference (nats/reply)", "generation", "kl"),
    ("judge score (mean)", "generation", "judge_score_mean"),
    ("implicit reward accuracy", "pairs", "rewards/accuracies"),
    ("implicit margin (beta)", "pairs", "rewards/margins"),
    ("logps/chosen", "pairs", "logps/chosen"),
    ("logps/rejected", "pairs", "logps/rejected"),
    ("reply length (tokens)", "generation", "length_mean"),
    ("EOS rate", "generation", "eos_rate"),
    ("repeated 4-gram rate", "generation", "repetition_rate"),
)


INTERVALS = {"win_rate": "win_rate_ci", "judge_score_mean": "judge_score_ci"}
"""The values shown with their 95% interval, and the key that holds it."""


def cell(column: dict[str, Any], section: str, key: str) -> str | None:
    value = column.get(section, {}).get(key)
    if value is None:
        return None
    if key in INTERVALS:
        low, high = column[section][INTERVALS[key]]
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.4g}"


def skipped_note(skipped: dict[str, dict[str, int]]) -> str:
    """"; skipped as malformed: prompts 1, pairs 1" when on_error skip left rows out."""
    counts = [f"{what} {sum(by_reason.values())}" for what, by_reason in skipped.items() if by_reason]
    return f"; skipped as malformed: {', '.join(counts)}" if counts else ""


def render_markdown(report: dict[str, Any]) -> str:
    """A short report: what was evaluated, and one table with a column per model (the reference first)."""
    columns = ([{**report["reference"], "name": f"{report['reference']['name']} (reference)"}]
               if report["reference"] else []) + report["policies"]
    data, settings = report["data"], report["settings"]
    sampling = "greedy" if settings["temperature"] == 0 else f"temperature {settings['temperature']:g}"
    lines = [
        "# align eval", "",
        f"- data: `{data['path']}` ({data['format']}): {data['prompts']} prompts, {data['pairs']} preference pairs"
        + skipped_note(data["skipped"]),
        (f"- sampling: {sampling}, up to {settings['max_new_tokens']} new tokens, seed {settings['seed']}; KL "
         f"estimator {settings['kl_estimator']}; beta {settings['beta']:g}"),
    ]
    judge = report["judge"]
    if judge:
        on_pairs = judge.get("pairs")
        lines.append(f"- judge: `{judge['spec']}`" + (
            f"; on the pairs: accuracy {on_pairs['accuracy']:.3f}, mean margin {on_pairs['margin_mean']:.4g}"
            if on_pairs else ""))
    lines += ["", "| metric | " + " | ".join(c["name"] for c in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for label, section, key in TABLE_ROWS:
        cells = [cell(c, section, key) for c in columns]
        if any(value is not None for value in cells):
            lines.append(f"| {label} | " + " | ".join(value or "–" for value in cells) + " |")
    lines += ["", ("Win rate: ties count 0.5. Brackets hold the 95% bootstrap interval. Reply length counts the EOS. "
                   "Repeated 4-gram rate: fraction of replies in which some 4 consecutive tokens occur twice."), ""]
    if report.get("baselines"):
        ranked = next(iter(report["baselines"].values()))
        models = [name for name in ranked if name.endswith(" implicit reward") or name == "judge"]
        lines += ["## Pair accuracy beside its baselines", "",
                  ("Each way of ranking the preference pairs, on the same pairs (ties count 0.5): a model is above "
                   "or below a baseline only when the 95% intervals do not overlap."), "",
                  baselines.markdown(report["baselines"], models)]
    return "\n".join(lines)


# (title, section, key) of the eval summary's bar charts.
EVAL_BARS = (
    ("win rate vs reference (95% CI)", "generation", "win_rate"),
    ("KL to reference (nats/reply)", "generation", "kl"),
    ("implicit reward accuracy", "pairs", "rewards/accuracies"),
    ("reply length (tokens)", "generation", "length_mean"),
    ("EOS rate", "generation", "eos_rate"),
    ("repeated 4-gram rate", "generation", "repetition_rate"),
)
FRACTIONS = {"win_rate", "rewards/accuracies", "eos_rate", "repetition_rate"}


def plot_eval(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """`align eval` charts: eval_summary.png (bars per model), eval_lengths.png (reply-length histograms) and, with
    preference pairs, eval_margins.png (implicit-margin histograms). Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = ([report["reference"]] if report["reference"] else []) + report["policies"]
    plt = pyplot()
    written = [eval_bars(plt, models, out_dir / "eval_summary.png")]
    for key, title, name in (("length", "reply length (tokens)", "eval_lengths.png"),
                             ("implicit_margin", "implicit reward margin", "eval_margins.png")):
        shown = [m for m in models if m["per_sample"].get(key)]
        if not shown:
            continue
        fig, (ax,) = panels(plt, 1)
        ax.hist([m["per_sample"][key] for m in shown], bins=20, label=[m["name"] for m in shown],
                histtype="step", linewidth=1.5)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("replies" if key == "length" else "pairs", fontsize=8)
        ax.legend(fontsize=7)
        save(plt, fig, out_dir / name)
        written.append(out_dir / name)
    return written


def eval_bars(plt, models: list[dict[str, Any]], path: Path) -> Path:
    """One bar chart per summary metric that some model has, a bar per model (win rate with its CI)."""
    shown = [(title, section, key) for title, section, key in EVAL_BARS
             if any(key in m.get(section, {}) for m in models)]
    fig, axes = panels(plt, len(shown))
    for ax, (title, section, key) in zip(axes, shown):
        having = [m for m in models if key in m.get(section, {})]
        values = [m[section][key] for m in having]
        errors = None
        if key == "win_rate":
            errors = [[v - m[section]["win_rate_ci"][0] for v, m in zip(values, having)],
                      [m[section]["win_rate_ci"][1] - v for v, m in zip(values, having)]]
        ax.bar([m["name"] for m in having], values, yerr=errors, capsize=4)
        if key in FRACTIONS:
            ax.set_ylim(0.0, 1.05)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    save(plt, fig, path)
    return path
