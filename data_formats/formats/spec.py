"""What a source format declares: its natural kind, its columns, how to recognise a row, how to convert one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

Converter = Callable[[dict], list[dict]]


@dataclass(frozen=True)
class Format:
    name: str
    kind: str
    """The canonical kind the format converts to; every format can also give `prompt` rows."""
    columns: tuple[str, ...]
    """Every top-level column the format reads (targets of a `columns=` mapping); other columns are ignored."""
    required: tuple[str, ...]
    """The columns that identify the format; used to name what is missing in detection errors."""
    detected_by: str
    example: str
    matches: Callable[[dict], bool]
    """Does a row look like this format? Key-based, so malformed rows still detect and get row-level errors."""
    convert: Converter
    """One source row -> canonical rows of `kind`; raises RowProblem / RowDropped. Pure."""
    notes: Callable[[dict], Iterable[str]] | None = None
    """Observations on a converted row that change nothing (a kept placeholder, an empty tools list); counted."""
    converter_for_rule: Callable[[str], Converter] | None = None
    """Formats that pick a rejected answer among scored ones build their converter from `Source.pair_rule`."""

    @property
    def kinds(self) -> tuple[str, ...]:
        return (self.kind,) if self.kind == "prompt" else (self.kind, "prompt")
