"""Errors raised by the dataset formatters."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data_formats.report import Report


class DataFormatError(ValueError):
    """Input data cannot be read or converted; the message names the file, row and reason."""


class InvalidRowsError(DataFormatError):
    """Some rows of a file are invalid (under `on_error="raise"`); `report` lists every problem."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report
