"""Helpers for the data_formats tests: write small row files in any supported layout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """write_jsonl(rows, name="data.jsonl"): one JSON value per line; a str item is written verbatim as a line."""

    def write(rows: list, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                        encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[..., Path]:
    def write(value: object, name: str = "data.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(value, indent=2), encoding="utf-8")
        return path

    return write
