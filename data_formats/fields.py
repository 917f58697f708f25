"""Typed access to the fields of a source row, raising RowProblem with the field name on a mismatch."""

from __future__ import annotations

from typing import Any

from data_formats.problems import MISSING_FIELD, WRONG_TYPE, RowProblem

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages (`null`, `string`, `array`...)."""
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def required(row: dict, key: str, name: str | None = None) -> Any:
    """row[key]; a missing key or a null value is a MISSING_FIELD problem."""
    value = row.get(key)
    if value is None:
        what = name or key
        if key in row:
            raise RowProblem(MISSING_FIELD, f"{what!r} is null")
        raise RowProblem(MISSING_FIELD, f"missing field {what!r} (row has: {', '.join(map(str, row)) or 'nothing'})")
    return value


def required_text(row: dict, key: str, name: str | None = None) -> str:
    return _of_type(required(row, key, name), str, "a string", name or key)


def optional_text(row: dict, key: str, name: str | None = None) -> str:
    """row[key] as text; a missing key or null means "" (the field is optional)."""
    value = row.get(key)
    return "" if value is None else _of_type(value, str, "a string", name or key)


def required_list(row: dict, key: str, name: str | None = None) -> list:
    return _of_type(required(row, key, name), list, "an array", name or key)


def _of_type(value: Any, kind: type, described: str, name: str) -> Any:
    if type(value) is not kind:
        raise RowProblem(WRONG_TYPE, f"{name!r} must be {described}, got {json_type(value)}")
    return value


def required_bool(row: dict, key: str) -> bool:
    value = required(row, key)
    if type(value) is not bool:
        raise RowProblem(WRONG_TYPE, f"{key!r} must be true or false, got {json_type(value)} {value!r}")
    return value
