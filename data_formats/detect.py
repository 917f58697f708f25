"""Pick a source format from the keys and value shapes of sampled rows, or explain why none or several fit."""

from __future__ import annotations

from collections import Counter

from data_formats.errors import DataFormatError
from data_formats.formats import FORMATS, Format

SAMPLE_SIZE = 200
"""Rows looked at, spread evenly over the file so a format change half-way through is noticed."""


def sample_rows(values: list[object]) -> list[dict]:
    rows = [value for value in values if type(value) is dict]
    step = max(1, len(rows) // SAMPLE_SIZE)
    return rows[::step][:SAMPLE_SIZE]


def detect_format(values: list[object], path: str) -> tuple[Format, str]:
    """The format matched by most sampled rows; ambiguity, no match or a minority match is a DataFormatError."""
    sample = sample_rows(values)
    if not sample:
        raise DataFormatError(f"{path}: no JSON object rows to detect the format from ({len(values)} records)")
    counts = {name: sum(1 for row in sample if fmt.matches(row)) for name, fmt in FORMATS.items()}
    best = max(counts.values())
    winners = [name for name, n in counts.items() if n == best]
    if best == 0:
        raise DataFormatError(_unknown_message(sample, path))
    if len(winners) > 1 or best * 2 < len(sample):
        matched = ", ".join(f"{name} ({n} rows)" for name, n in counts.items() if n)
        raise DataFormatError(f"{path}: ambiguous data format: of {len(sample)} sampled rows, {matched} match. "
                              f"Keys seen: {_keys_seen(sample)}. Pass format= (one of: {', '.join(FORMATS)}).")
    return FORMATS[winners[0]], f"auto: {best}/{len(sample)} sampled rows match"


def _unknown_message(sample: list[dict], path: str) -> str:
    keys = Counter(key for row in sample for key in row)
    closest = sorted(FORMATS.values(), key=lambda fmt: -sum(key in keys for key in fmt.required))[:3]
    hints = "; ".join(
        f"{fmt.name} needs {' + '.join(fmt.required)} (missing: {', '.join(k for k in fmt.required if k not in keys)})"
        for fmt in closest
    )
    message = (f"{path}: cannot detect the data format. Keys seen in {len(sample)} sampled rows: {_keys_seen(sample)}. "
               f"Closest formats: {hints}. Pass format= (one of: {', '.join(FORMATS)}) and "
               "columns={canonical: actual} for custom column names.")
    if len(sample) == 1 and sample[0] and all(type(v) is dict for v in sample[0].values()):
        message += (" This file is one object whose values are all objects: it looks like metadata or a config "
                    "(e.g. LLaMA-Factory's dataset_info.json), not a list of data rows.")
    return message


def _keys_seen(sample: list[dict]) -> str:
    keys = Counter(key for row in sample for key in row)
    shown = ", ".join(f"{key} ({n})" for key, n in keys.most_common(20))
    return shown + (f", ... {len(keys) - 20} more" if len(keys) > 20 else "")
