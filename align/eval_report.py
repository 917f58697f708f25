"""`align eval`'s outputs: eval.json, samples.jsonl and eval.md, a short report with one column per model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_outputs(out: Path, report: dict[str, Any], markdown: str, samples: list[dict]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "eval.json", out / "eval.md", out / "samples.jsonl"]
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


def cell(column: dict[str, Any], section: str, key: str) -> str | None:
    value = column.get(section, {}).get(key)
    if value is None:
        return None
    if key == "win_rate":
        low, high = column[section]["win_rate_ci"]
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.4g}"


def render_markdown(report: dict[str, Any]) -> str:
    """A short report: what was evaluated, and one table with a column per model (the reference first)."""
    columns = ([{**report["reference"], "name": f"{report['reference']['name']} (reference)"}]
               if report["reference"] else []) + report["policies"]
    data, settings = report["data"], report["settings"]
    sampling = "greedy" if settings["temperature"] == 0 else f"temperature {settings['temperature']:g}"
    lines = [
        "# align eval", "",
        f"- data: `{data['path']}` ({data['format']}): {data['prompts']} prompts, {data['pairs']} preference pairs",
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
    lines += ["", ("Win rate: ties count 0.5; brackets hold the 95% bootstrap interval. Reply length counts the EOS. "
                   "Repeated 4-gram rate: fraction of replies in which some 4 consecutive tokens occur twice."), ""]
    return "\n".join(lines)
