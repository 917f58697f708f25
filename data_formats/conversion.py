"""Convert one source file to canonical JSONL, with its report written next to it as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from data_formats.errors import DataFormatError
from data_formats.loading import Source, load_source
from data_formats.report import Report


def report_path(out_path: str | os.PathLike) -> Path:
    """Where `convert` writes the report: OUT.jsonl -> OUT.report.json."""
    out = Path(out_path)
    return out.with_name(out.stem + ".report.json")


def convert(path: str, kind: str, out_path: str, *, format: str = "auto",
            columns: dict[str, str] | None = None, on_error: str = "raise") -> Report:
    """Write the canonical rows of `path` to `out_path` (JSONL) and the report to `report_path(out_path)`.

    Args:
        path: the source file or hub id.
        kind: the canonical kind to write.
        out_path: the JSONL file to write; its folder is created if needed.
        format: a FORMATS name, or "auto".
        columns: {canonical name: actual column} for custom column names.
        on_error: "raise" writes nothing if any row is invalid; "skip" writes the valid rows.

    Returns:
        The Report, also saved as JSON next to the output.

    Raises:
        InvalidRowsError: under "raise", when any row is invalid (nothing is written).
        DataFormatError: as `load_source`, or when the output would overwrite the input.
    """
    out = Path(out_path)
    if out.exists() and Path(path).exists() and out.resolve() == Path(path).resolve():
        raise DataFormatError(f"{out_path}: the output would overwrite the input file")
    loaded = load_source(Source(path=path, format=format, columns=dict(columns or {})), kind, on_error=on_error)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in loaded.rows))
    _write_text(report_path(out), json.dumps(loaded.report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    return loaded.report


def _write_text(path: Path, text: str) -> None:
    """Write whole, then move into place: an interrupted run never leaves a half-written file behind."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
