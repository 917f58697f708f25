"""Load one source file into validated canonical rows of a requested kind, with a report of everything left out."""

from __future__ import annotations

import gc
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from data_formats.detect import detect_format
from data_formats.errors import DataFormatError, InvalidRowsError
from data_formats.fields import json_type
from data_formats.formats import FORMATS, Format
from data_formats.formats.scored_completions import PAIR_RULES
from data_formats.formats.spec import Converter
from data_formats.kinds import KINDS, VALIDATORS, to_prompt
from data_formats.problems import NOT_AN_OBJECT, RowDropped, RowProblem
from data_formats.readers import BadRecord, Records, read_records
from data_formats.report import Problem, Report

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


@dataclass
class Source:
    """One data source: a local file (.json, .jsonl, .csv, .parquet) or a Hugging Face hub dataset id."""

    path: str
    format: str = "auto"
    """A name from FORMATS, or "auto" to detect it from the rows."""
    columns: dict[str, str] = field(default_factory=dict)
    """{canonical column name: actual column name} for files with custom column names."""
    weight: float = 1.0
    """Mixing weight in `prepare`: this source gives about weight x its rows to train (see README)."""
    split: str | None = None
    """Hub datasets only: the split to load (default "train")."""
    pair_rule: str = "worst"
    """scored_completions only: how the rejected completion is picked (worst | second | random)."""

    def __post_init__(self) -> None:
        self.path = os.fspath(self.path)
        if not self.path:
            raise DataFormatError("Source.path is empty")
        if self.format != "auto" and self.format not in FORMATS:
            raise DataFormatError(f"{self.path}: unknown format {self.format!r}; use \"auto\" or one of "
                                  f"{', '.join(FORMATS)}")
        if type(self.columns) is not dict or not all(type(k) is str and type(v) is str
                                                     for k, v in self.columns.items()):
            raise DataFormatError(f"{self.path}: columns must map canonical names to actual column names "
                                  f"(str -> str), got {self.columns!r}")
        if type(self.weight) not in (int, float) or not math.isfinite(self.weight) or self.weight <= 0:
            raise DataFormatError(f"{self.path}: weight must be a number > 0, got {self.weight!r}")
        if self.pair_rule not in PAIR_RULES:
            raise DataFormatError(f"{self.path}: pair_rule must be one of {', '.join(PAIR_RULES)}, "
                                  f"got {self.pair_rule!r}")


@dataclass
class Loaded:
    rows: list[dict]
    report: Report


def as_source(source: Source | str | os.PathLike) -> Source:
    return source if isinstance(source, Source) else Source(path=os.fspath(source))


def load_source(source: Source | str, kind: str, *, on_error: str = "raise") -> Loaded:
    """Read one source and return its rows as validated canonical rows of `kind`.

    Args:
        source: a Source, or a path / hub id (format detected, no column mapping).
        kind: "sft", "preference", "kto" or "prompt".
        on_error: "raise" collects every invalid row of the file and raises once; "skip" leaves them out.

    Returns:
        Loaded: `.rows` (canonical dicts) and `.report` (counts by reason; policy drops are always counted).

    Raises:
        InvalidRowsError: under "raise", when any row is invalid; names each one by file and line or position.
        DataFormatError: the file cannot be read, its format not detected, or the format cannot give `kind`.
    """
    source = as_source(source)
    check_choice("kind", kind, KINDS)
    check_choice("on_error", on_error, ON_ERROR)
    rows, report = convert_source(source, kind, on_error)
    if on_error == "raise" and report.problems:
        raise InvalidRowsError(report.error_message(), report)
    log.debug("%s", report.summary())  # callers report it (align.data logs it, `align data convert` prints it)
    return Loaded(rows, report)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Rows are trees of dicts and lists, freed by reference counting alone; the cyclic collector would only rescan
    the growing heap as they are built (a fifth of the time of a 100k-row file)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def source_kind(source: Source | str) -> str:
    """The canonical kind a source's format gives by itself (its rows are read to detect a format left on auto);
    stages that take two kinds of data (kto: unpaired rows or preference pairs) ask it before loading."""
    source = as_source(source)
    if source.format != "auto":
        return FORMATS[source.format].kind
    values = [value for _, value in read_records(source.path, source.split).items]
    if source.columns:
        values = [rename_columns(value, source.columns) if type(value) is dict else value for value in values]
    return detect_format(values, source.path)[0].kind


def convert_source(source: Source, kind: str | None, on_error: str) -> tuple[list[dict], Report]:
    """Every valid canonical row and the full report, whatever the problems (`kind=None`: the format's own kind)."""
    with _cyclic_gc_paused():
        return _convert_source(source, kind, on_error)


def _convert_source(source: Source, kind: str | None, on_error: str) -> tuple[list[dict], Report]:
    records = read_records(source.path, source.split)
    values = [value for _, value in records.items]
    if source.columns:
        values = [rename_columns(value, source.columns) if type(value) is dict else value for value in values]
    if source.format == "auto":
        fmt, detected = detect_format(values, source.path)
    else:
        fmt, detected = FORMATS[source.format], "given"
    kind = kind or fmt.kind
    if kind not in fmt.kinds:
        raise DataFormatError(f"{source.path}: {fmt.name} rows are {fmt.kind} data; cannot produce {kind} rows "
                              f"({fmt.name} gives: {', '.join(fmt.kinds)})")
    unknown = [name for name in source.columns if name not in fmt.columns]
    if unknown:
        raise DataFormatError(f"{source.path}: columns= names {', '.join(map(repr, unknown))} are not {fmt.name} "
                              f"columns; {fmt.name} reads: {', '.join(fmt.columns)}")
    if source.pair_rule != "worst" and fmt.converter_for_rule is None:
        raise DataFormatError(f"{source.path}: pair_rule applies to scored_completions only, not {fmt.name}")
    convert = fmt.converter_for_rule(source.pair_rule) if fmt.converter_for_rule else fmt.convert
    report = Report(source=source.path, format=fmt.name, kind=kind, detected=detected, unit=records.unit,
                    on_error=on_error, columns=dict(source.columns), rows_in=len(values),
                    blank_lines=records.blank_lines)
    rows = _convert_rows(records, values, fmt, convert, kind, report)
    return rows, report


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    """The row with each mapped actual column renamed to its canonical name (absent columns stay absent)."""
    actual = set(columns.values())
    renamed = {key: value for key, value in row.items() if key not in actual}
    for canonical, column in columns.items():
        if column in row:
            renamed[canonical] = row[column]
    return renamed


def _convert_rows(records: Records, values: list, fmt: Format, convert: Converter, kind: str,
                  report: Report) -> list[dict]:
    validate = VALIDATORS[kind]
    project = to_prompt if kind != fmt.kind else None
    known = set(fmt.columns)
    ignored: set[str] = set()
    key_sets: set[tuple] = set()
    dropped: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    problems = report.problems
    rows: list[dict] = []
    for (number, _), value in zip(records.items, values, strict=True):
        try:
            if type(value) is not dict:
                if type(value) is BadRecord:
                    raise RowProblem(value.reason, value.detail)
                raise RowProblem(NOT_AN_OBJECT, f"expected a JSON object, got {json_type(value)}")
            produced = convert(value)
            if project is not None:
                produced = [project(row) for row in produced]
            for row in produced:
                validate(row)
        except RowProblem as problem:
            problems.append(Problem(records.path, records.unit, number, problem.reason, problem.detail))
            continue
        except RowDropped as drop:
            dropped[drop.reason] += 1
            continue
        rows.extend(produced)
        report.rows_converted += 1
        keys = tuple(value)
        if keys not in key_sets:
            key_sets.add(keys)
            ignored.update(key for key in keys if key not in known)
        if fmt.notes is not None:
            notes.update(fmt.notes(value))
    report.rows_out = len(rows)
    report.dropped = dict(dropped.most_common())
    report.notes = dict(notes.most_common())
    report.ignored_columns = sorted(ignored)
    return rows


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DataFormatError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
