"""Inspect a data file without training: detected format, validity, problems by reason, lengths, two examples."""

from __future__ import annotations

import math
from typing import Any

from data_formats.kinds import KINDS
from data_formats.loading import Source, check_choice, convert_source
from data_formats.report import FIRST_SHOWN

MESSAGE_FIELDS = ("messages", "prompt", "chosen", "rejected", "completion")
PERCENTILES = (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
SHOWN_CHARS = 300


def inspect(path: str, kind: str | None = None, *, format: str = "auto",
            columns: dict[str, str] | None = None) -> dict[str, Any]:
    """Read and check every row of a file, raising for none of them.

    Args:
        path: a data file or hub id.
        kind: the canonical kind to check against; None uses the format's natural kind.
        format: a FORMATS name, or "auto".
        columns: {canonical name: actual column} for custom column names.

    Returns:
        Plain data (JSON-ready): path, format, detected, kind, rows, rows_valid, rows_out, valid (True when no row
        has a problem; policy drops such as judge ties do not make a file invalid), row_unit, problems
        ({reason: {count, first_rows, example}}), dropped, notes, ignored_columns, lengths (characters per field
        and turns, as min / p50 / p90 / p99 / max) and examples (two rendered rows).

    Raises:
        DataFormatError: the file cannot be read, its format not detected, or the format cannot give `kind`.
    """
    if kind is not None:
        check_choice("kind", kind, KINDS)
    source = Source(path=path, format=format, columns=dict(columns or {}))
    rows, report = convert_source(source, kind, on_error="skip")
    problems: dict[str, dict[str, Any]] = {}
    for problem in report.problems:
        entry = problems.setdefault(problem.reason, {"count": 0, "first_rows": [], "example": problem.detail})
        entry["count"] += 1
        if len(entry["first_rows"]) < FIRST_SHOWN:
            entry["first_rows"].append(problem.row)
    return {
        "path": report.source,
        "format": report.format,
        "detected": report.detected,
        "kind": report.kind,
        "rows": report.rows_in,
        "rows_valid": report.rows_converted,
        "rows_out": report.rows_out,
        "valid": not report.problems,
        "row_unit": report.unit,
        "problems": problems,
        "dropped": report.dropped,
        "notes": report.notes,
        "ignored_columns": report.ignored_columns,
        "lengths": length_stats(rows),
        "examples": [render_row(row) for row in rows[:2]],
    }


def length_stats(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Characters per message field (and turns per conversation), as min / p50 / p90 / p99 / max."""
    values: dict[str, list[int]] = {}
    for row in rows:
        for name in MESSAGE_FIELDS:
            if name in row:
                values.setdefault(f"{name}_chars", []).append(sum(len(m["content"]) for m in row[name]))
                if name in ("messages", "prompt"):
                    values.setdefault(f"{name}_turns", []).append(len(row[name]))
    return {name: _percentiles(sorted(numbers)) for name, numbers in values.items()}


def _percentiles(ordered: list[int]) -> dict[str, int]:
    n = len(ordered)
    return {label: ordered[max(0, math.ceil(p / 100 * n) - 1)] for label, p in PERCENTILES}


def render_row(row: dict) -> str:
    """A canonical row as readable text: one `[role] content` line per message, grouped by field."""
    lines = []
    for name in MESSAGE_FIELDS:
        if name in row:
            lines.append(f"--- {name} ---")
            for msg in row[name]:
                content = msg["content"]
                if len(content) > SHOWN_CHARS:
                    content = content[:SHOWN_CHARS] + f"... [{len(msg['content'])} chars]"
                lines.append(f"[{msg['role']}] {content}")
    if "label" in row:
        lines.append(f"--- label: {str(row['label']).lower()} ---")
    if "tools" in row:
        lines.append(f"--- tools: {', '.join(str(t.get('name', '?')) for t in row['tools'])} ---")
    return "\n".join(lines)


def render_inspect(report: dict[str, Any]) -> str:
    """Human-readable text of an `inspect()` result."""
    status = "valid" if report["valid"] else "INVALID"
    lines = [
        f"{report['path']}: {report['format']} ({report['detected']}) -> {report['kind']}",
        f"{status}: {report['rows_valid']} of {report['rows']} rows valid, {report['rows_out']} canonical rows",
    ]
    unit = report["row_unit"]
    for reason, entry in report["problems"].items():
        rows = ", ".join(map(str, entry["first_rows"])) + (", ..." if entry["count"] > len(entry["first_rows"]) else "")
        lines.append(f"  {reason}: {entry['count']} ({unit} {rows}); e.g. {entry['example']}")
    if report["dropped"]:
        lines.append("dropped by policy: " + ", ".join(f"{k} {v}" for k, v in report["dropped"].items()))
    if report["notes"]:
        lines.append("notes: " + ", ".join(f"{k} {v}" for k, v in report["notes"].items()))
    if report["ignored_columns"]:
        lines.append("ignored columns: " + ", ".join(report["ignored_columns"]))
    if report["lengths"]:
        lines.append("lengths (min / p50 / p90 / p99 / max):")
        for name, stats in report["lengths"].items():
            lines.append(f"  {name}: " + " / ".join(str(v) for v in stats.values()))
    for i, example in enumerate(report["examples"], 1):
        lines.append(f"example {i}:")
        lines.extend(f"  {line}" for line in example.splitlines())
    return "\n".join(lines)
