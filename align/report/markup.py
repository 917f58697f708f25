"""HTML building blocks for the report: escaped text, numbers, values with intervals, tables, badges, notes.

Every piece of text that comes from a run goes through `text` (or a helper that calls it): completions, prompts,
paths and metric names may hold any characters, `<script>` included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape
from typing import Any

Cell = str
"""A table cell's HTML, already escaped."""


def text(value: Any) -> str:
    return escape(str(value), quote=True)


def number(value: Any) -> str:
    """A value from a run as short text: ints with thousands separators, floats to 4 significant digits, the rest
    as is (escaped)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else text(value)
    if value is None:
        return "–"
    return text(value)


def is_interval(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def with_interval(value: Any, interval: Any) -> str:
    """"0.620 [0.550, 0.690]": a fraction (accuracy, win rate) with its 95% interval."""
    if not isinstance(value, (int, float)) or not is_interval(interval):
        return number(value)
    low, high = interval
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def interval_of(values: dict[str, Any], key: str) -> Any:
    """The interval recorded beside `key`: `<key>_ci` or `<key>_interval` (eval.json's win_rate_ci)."""
    return next((values[k] for k in (f"{key}_ci", f"{key}_interval") if is_interval(values.get(k))), None)


def is_interval_key(values: dict[str, Any], key: str) -> bool:
    """True for `x_ci` / `x_interval` when `x` is in `values` too (shown inside x's cell)."""
    for suffix in ("_ci", "_interval"):
        if key.endswith(suffix) and key.removesuffix(suffix) in values:
            return True
    return False


def measured(value: Any) -> str:
    """A value that may be a {"accuracy" or "value": v, "ci" or "interval": [lo, hi]} record, or a plain value."""
    if isinstance(value, dict):
        main = next((value[k] for k in ("accuracy", "win_rate", "value", "mean") if k in value), None)
        bounds = value.get("ci", value.get("interval"))
        return with_interval(main, bounds) if bounds is not None else number(main)
    return number(value)


def seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return number(value)
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def code(value: Any) -> str:
    return f"<code>{text(value)}</code>"


def badge(label: str, tone: str) -> str:
    """tone: ok, warn, bad or plain."""
    return f'<span class="badge {tone}">{text(label)}</span>'


def note(message: str) -> str:
    """A one-line note (what a run lacks, and what writes it); `backticks` mark code."""
    return '<p class="note">' + re.sub(r"`([^`]+)`", r"<code>\1</code>", text(message)) + "</p>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], *, align: str = "", css: str = "") -> str:
    """A table of pre-escaped cells; `align` gives each column l or r (numbers right-aligned), default l."""
    def cls(i: int) -> str:
        return ' class="r"' if align[i:i + 1] == "r" else ""

    head = "".join(f"<th{cls(i)}>{text(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
                   for row in rows)
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(items: Sequence[tuple[str, Cell]], *, css: str = "") -> str:
    """Labels and values side by side (values pre-escaped); css "cols" lays them out in three column pairs."""
    rows = "".join(f"<dt>{text(label)}</dt><dd>{value}</dd>" for label, value in items)
    return f'<dl class="facts {css}">{rows}</dl>'
