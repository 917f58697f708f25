"""Read a source into records (row number, parsed value): JSON, JSONL, CSV, parquet, or a Hugging Face hub id.

Row numbers are what a person looks up: the editor line for JSONL and CSV, the 1-based list position for JSON,
the 1-based row for parquet and hub datasets. A JSONL line that is not JSON becomes a BadRecord (a row problem,
not a file error), so one broken line never hides the others.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_formats.errors import DataFormatError
from data_formats.problems import BAD_CSV_ROW, INVALID_JSON

log = logging.getLogger(__name__)

FILE_TYPES = (".json", ".jsonl", ".ndjson", ".csv", ".parquet")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be parsed; the loader reports it as a row problem."""

    reason: str
    detail: str


@dataclass
class Records:
    path: str
    unit: str
    items: list[tuple[int, Any]] = field(default_factory=list)
    blank_lines: int = 0


def read_records(path: str, split: str | None = None) -> Records:
    file = Path(path)
    if file.is_file():
        if split is not None:
            raise DataFormatError(f"{path}: split={split!r} applies to hub datasets only, not to local files")
        suffix = file.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(file, path)
        if suffix == ".json":
            return _read_json(file, path)
        if suffix == ".csv":
            return _read_csv(file, path)
        if suffix == ".parquet":
            return _read_parquet(file, path)
        raise DataFormatError(f"{path}: unsupported file type {suffix or '(none)'!r}; use one of "
                              f"{', '.join(FILE_TYPES)}")
    if file.exists():
        raise DataFormatError(f"{path}: is a directory; give a data file ({', '.join(FILE_TYPES)}) or a hub dataset id")
    if file.suffix.lower() in FILE_TYPES or not _HUB_ID.fullmatch(path):
        raise DataFormatError(f"{path}: file not found")
    return _read_hub(path, split or "train")


def _read_jsonl(file: Path, path: str) -> Records:
    records = Records(path, "line")
    items = records.items
    with file.open("rb") as f:
        for number, line in enumerate(f, 1):
            if number == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]
            if not line.strip():
                records.blank_lines += 1
                continue
            try:
                items.append((number, json.loads(line.decode())))  # decoded here: json's own sniffing is slower
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
                items.append((number, BadRecord(INVALID_JSON, f"not valid JSON: {e}")))
    return records


def _read_json(file: Path, path: str) -> Records:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text: {e}") from e
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            log.info("%s: holds one JSON object per line; reading it as JSONL", path)
            return _read_jsonl(file, path)
        raise DataFormatError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    if type(value) is dict:
        return Records(path, "item", [(1, value)])
    if type(value) is not list:
        raise DataFormatError(f"{path}: the top-level JSON value must be a list of row objects (or one object), "
                              f"got {type(value).__name__}")
    return Records(path, "item", list(enumerate(value, 1)))


def _read_csv(file: Path, path: str) -> Records:
    # Cells stay text: CSV suits the flat formats (alpaca, hh_rlhf, text preference pairs, paired answers).
    records = Records(path, "line")
    try:
        with file.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return records
            start = reader.line_num + 1
            for cells in reader:
                if not cells:
                    records.blank_lines += 1
                elif len(cells) != len(header):
                    records.items.append((start, BadRecord(BAD_CSV_ROW, f"{len(cells)} fields, the header has "
                                                                        f"{len(header)}")))
                else:
                    records.items.append((start, dict(zip(header, cells, strict=True))))
                start = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataFormatError(f"{path}: cannot read as CSV: {e}") from e
    return records


def _read_parquet(file: Path, path: str) -> Records:
    import pyarrow.parquet  # lazy: only parquet sources pay for pyarrow

    try:
        rows = pyarrow.parquet.read_table(file).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        raise DataFormatError(f"{path}: cannot read as parquet: {type(e).__name__}: {e}") from e
    return Records(path, "row", list(enumerate(rows, 1)))


def _read_hub(dataset_id: str, split: str) -> Records:
    try:
        import datasets  # lazy: only hub sources pay for `datasets`
    except ImportError as e:
        raise DataFormatError(f"{dataset_id}: not a local file; loading it from the hub needs `datasets`") from e
    try:
        rows = datasets.load_dataset(dataset_id, split=split).to_list()
    except Exception as e:  # network, auth, missing dataset or split: all mean "cannot load this id"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataFormatError(
            f"{dataset_id}: not a local file, and loading it as a Hugging Face hub dataset (split {split!r}) failed: "
            f"{type(e).__name__}: {first_line}. Check the path or id; offline, download the dataset first."
        ) from e
    return Records(dataset_id, "row", list(enumerate(rows, 1)))
