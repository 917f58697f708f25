"""Read a source into records (row number, parsed value): JSON, JSONL, CSV, parquet, or a Hugging Face hub id.

Row numbers are what a person looks up: the editor line for JSONL and CSV, the 1-based list position for JSON,
the 1-based row for parquet and hub datasets. A JSONL line that is not JSON becomes a BadRecord (a row problem,
not a file error), so one broken line never hides the others; so does a JSON row nested deeper than the parser goes
or holding an object with a repeated key (json keeps the last value silently), in JSONL and in a JSON array alike.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from data_formats.errors import DataFormatError
from data_formats.problems import BAD_CSV_ROW, DUPLICATE_KEY, INVALID_JSON, NESTED_TOO_DEEP

log = logging.getLogger(__name__)

FILE_TYPES = (".json", ".jsonl", ".ndjson", ".csv", ".parquet")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_BOM = b"\xef\xbb\xbf"
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be parsed; the loader reports it as a row problem."""

    reason: str
    detail: str


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict:
    """json's object hook: the object as a dict, or _DuplicateKey where a key repeats (dict() keeps the last)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_repeats)


def _row_problem(error: RecursionError | _DuplicateKey) -> BadRecord:
    if isinstance(error, _DuplicateKey):
        return BadRecord(DUPLICATE_KEY, f"an object has the key {error.key!r} twice")
    return BadRecord(NESTED_TOO_DEEP, "arrays or objects nested deeper than the JSON parser goes")


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
                items.append((number, _DECODER.decode(line.decode())))  # decoded here: json's own sniffing is slower
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
                items.append((number, BadRecord(INVALID_JSON, f"not valid JSON: {e}")))
            except (RecursionError, _DuplicateKey) as e:
                items.append((number, _row_problem(e)))
    return records


def _read_json(file: Path, path: str) -> Records:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text: {e}") from e
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            log.info("%s: holds one JSON object per line; reading it as JSONL", path)
            return _read_jsonl(file, path)
        raise DataFormatError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    except (RecursionError, _DuplicateKey) as e:
        start = _JSON_SPACE.match(text).end()
        if text.startswith("[", start):
            return Records(path, "item", _read_json_items(text, path))
        if _JSON_SPACE.match(text, _end_of_value(text, start, path)).end() < len(text):
            log.info("%s: holds one JSON object per line; reading it as JSONL", path)
            return _read_jsonl(file, path)
        return Records(path, "item", [(1, _row_problem(e))])
    if type(value) is dict:
        return Records(path, "item", [(1, value)])
    if type(value) is not list:
        raise DataFormatError(f"{path}: the top-level JSON value must be a list of row objects (or one object), "
                              f"got {type(value).__name__}")
    return Records(path, "item", list(enumerate(value, 1)))


def _read_json_items(text: str, path: str) -> list[tuple[int, Any]]:
    """A JSON array item by item (the slow path, taken only when some item is a row problem)."""
    items: list[tuple[int, Any]] = []
    at = _JSON_SPACE.match(text, text.index("[") + 1).end()
    closed = text.startswith("]", at)
    while not closed:
        try:
            value, at = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
        except (RecursionError, _DuplicateKey) as e:
            value, at = _row_problem(e), _end_of_value(text, at, path)
        items.append((len(items) + 1, value))
        at = _JSON_SPACE.match(text, at).end()
        closed = text.startswith("]", at)
        if not closed and not text.startswith(",", at):
            _invalid_at(text, at, path, "Expecting ',' delimiter")
        at = _JSON_SPACE.match(text, at + 1).end()
    if at < len(text):
        _invalid_at(text, at, path, "Extra data")
    return items


def _end_of_value(text: str, start: int, path: str) -> int:
    """Where the array or object opening at `start` ends, found by bracket depth (brackets inside strings skipped)."""
    depth = 0
    for token in _STRING_OR_BRACKET.finditer(text, start):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
        elif bracket in "]}":
            depth -= 1
            if depth == 0:
                return token.end()
    _invalid_at(text, len(text), path, "Unterminated array or object")


def _invalid_at(text: str, at: int, path: str, message: str) -> NoReturn:
    error = json.JSONDecodeError(message, text, at)
    raise DataFormatError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {message}")


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
