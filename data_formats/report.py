"""What happened to one source file: rows in and out, problems by reason, policy drops, notes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FIRST_SHOWN = 10
"""Problems listed one by one in messages and reports; the rest are only counted."""


@dataclass(frozen=True)
class Problem:
    file: str
    unit: str
    """How `row` counts: "line" (JSONL, CSV: the line an editor shows), "item" (JSON list position), "row"."""
    row: int
    reason: str
    detail: str

    @property
    def location(self) -> str:
        return f"{self.file}:{self.row}" if self.unit == "line" else f"{self.file} {self.unit} {self.row}"

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}: {self.detail}"


@dataclass
class Report:
    source: str
    format: str
    kind: str
    detected: str = ""
    """How the format was chosen: "given" or "auto: N/M sampled rows match"."""
    unit: str = "line"
    """How problem rows count (see Problem.unit)."""
    on_error: str = "raise"
    columns: dict[str, str] = field(default_factory=dict)
    rows_in: int = 0
    """Records read: JSON items, non-blank JSONL/CSV lines (invalid ones included), parquet/hub rows."""
    rows_converted: int = 0
    """Records that produced canonical rows; rows_in = rows_converted + skipped/invalid + dropped."""
    rows_out: int = 0
    """Canonical rows produced (a Self-Instruct task with several instances gives several)."""
    problems: list[Problem] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    blank_lines: int = 0

    @property
    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.reason for p in self.problems).most_common())

    @property
    def skipped(self) -> dict[str, int]:
        """Invalid rows left out under on_error="skip", by reason (empty under "raise": those rows raise)."""
        return self.problem_counts if self.on_error == "skip" else {}

    def to_dict(self) -> dict[str, Any]:
        by_reason: dict[str, dict[str, Any]] = {}
        for problem in self.problems:
            entry = by_reason.setdefault(problem.reason, {"count": 0, "first": []})
            entry["count"] += 1
            if len(entry["first"]) < FIRST_SHOWN:
                entry["first"].append(f"{problem.location}: {problem.detail}")
        return {
            "source": self.source,
            "format": self.format,
            "kind": self.kind,
            "detected": self.detected,
            "unit": self.unit,
            "on_error": self.on_error,
            "columns": dict(self.columns),
            "rows_in": self.rows_in,
            "rows_converted": self.rows_converted,
            "rows_out": self.rows_out,
            "skipped": self.skipped,
            "dropped": dict(self.dropped),
            "notes": dict(self.notes),
            "ignored_columns": list(self.ignored_columns),
            "blank_lines": self.blank_lines,
            "problems": by_reason,
        }

    def summary(self) -> str:
        head = f"{self.source}: {self.format} -> {self.kind} ({self.detected}); {self.rows_in} rows in, "
        lines = [head + f"{self.rows_out} out"]
        if self.problems:
            verb = "skipped" if self.on_error == "skip" else "invalid"
            lines.append(f"  {verb} {len(self.problems)}: {_counts(self.problem_counts)}")
        if self.dropped:
            lines.append(f"  dropped by policy {sum(self.dropped.values())}: {_counts(self.dropped)}")
        if self.notes:
            lines.append(f"  notes: {_counts(self.notes)}")
        if self.columns:
            lines.append(f"  columns: {', '.join(f'{k} <- {v}' for k, v in self.columns.items())}")
        if self.ignored_columns:
            lines.append(f"  ignored columns: {', '.join(self.ignored_columns)}")
        return "\n".join(lines)

    def error_message(self) -> str:
        """The message of the error raised for this report's problems under on_error="raise"."""
        shown = "\n".join(f"  {p}" for p in self.problems[:FIRST_SHOWN])
        more = len(self.problems) - FIRST_SHOWN
        return (f"{self.source}: {len(self.problems)} of {self.rows_in} rows are invalid as {self.format} -> "
                f"{self.kind} ({_counts(self.problem_counts)}):\n{shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + '\nFix those rows, or pass on_error="skip" to leave them out (they are counted in the report).')


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items())
