"""Stage data: read every configured source through `data_formats`, then tokenize for the stage's trainer."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import data_formats
from align.chat import IGNORE_INDEX
from align.sections import DataConfig

log = logging.getLogger(__name__)

Row = TypeVar("Row")


@dataclass
class StageData:
    train: list[dict]
    eval: list[dict]
    report: dict[str, Any]
    dropped: Counter = field(default_factory=Counter)
    """Rows dropped by the stage after formatting (too long, nothing left to train on), counted by reason."""
    eval_origins: list[str] = field(default_factory=list)
    """The source path of each eval row, in order."""

    def origins_of(self, rows: list[dict]) -> list[str]:
        """The source path of each of `rows`, eval rows a stage kept (kept rows are the same objects)."""
        origin = {id(row): path for row, path in zip(self.eval, self.eval_origins, strict=True)}
        return [origin[id(row)] for row in rows]


def sources(cfg: DataConfig, which: str) -> list[data_formats.Source]:
    return [
        data_formats.Source(path=s.path, format=s.format, columns=dict(s.columns), weight=s.weight, split=s.split)
        for s in getattr(cfg, which)
    ]


def load(cfg: DataConfig, kind: str) -> StageData:
    """Canonical rows of `kind` for training and evaluation, with the formatter's report."""
    prepared = data_formats.prepare(
        sources(cfg, "train"), kind, eval=sources(cfg, "eval"), eval_fraction=cfg.eval_fraction,
        on_error=cfg.on_error, dedup=cfg.dedup, seed=cfg.seed,
    )
    report = prepared.report.to_dict()
    log.info("data: %d train / %d eval %s rows (%s)", len(prepared.train), len(prepared.eval), kind,
             prepared.report.summary().replace("\n", "; "))
    return StageData(train=prepared.train, eval=prepared.eval, report=report, eval_origins=prepared.eval_origins)


Encoding = dict[str, list[int]]
"""A row's token lists by name (`input_ids` and `labels`, a pair's `chosen_ids` and `rejected_ids`, ...)."""


@dataclass(frozen=True)
class LengthLimit:
    """A stage's token budget for one row, and what happens to a row over it."""

    max_length: int
    drop_long: bool
    """Drop an over-long row (counted) instead of cutting it."""
    keep: Literal["start", "end"] = "start"
    """Which tokens of an over-long row survive the cut: its first or its last `max_length`."""
    too_long: str = ""
    """The reason an over-long row is dropped under; empty: "longer than train.max_length=N"."""


def fit_to_length(rows: list[Row], encode: Callable[[Row], Encoding], limit: LengthLimit, *, dropped: Counter,
                  split: str, unusable: Callable[[Encoding], str | None] | None = None) -> list[tuple[Row, Encoding]]:
    """Encode rows and fit them to `limit`; every drop is counted in `dropped` as "<split>: <reason>".

    A row's length is its longest token list. An over-long row is dropped with limit.drop_long, otherwise every
    token list is cut to its first (keep="start") or last (keep="end") max_length tokens. `unusable(encoding)` names
    a stage's reason to drop a row with nothing left to train on, judged on the row as it will be trained (cut
    unless dropped for its length); that reason comes before the length one. Returns the kept rows with their
    (cut) encodings.
    """
    kept, cut, here = [], 0, Counter()
    for row in rows:
        encoding = encode(row)
        over = max(map(len, encoding.values())) > limit.max_length
        if over and not limit.drop_long:
            encoding = {name: _cut(ids, limit) for name, ids in encoding.items()}
        reason = unusable(encoding) if unusable else None
        if reason is None and over and limit.drop_long:
            reason = limit.too_long or f"longer than train.max_length={limit.max_length}"
        if reason is not None:
            here[f"{split}: {reason}"] += 1
            continue
        if over:
            cut += 1
        kept.append((row, encoding))
    if cut:
        log.info("%s: %d of %d rows keep only their %s %d tokens", split, cut, len(rows),
                 "first" if limit.keep == "start" else "last", limit.max_length)
    for reason, count in here.items():
        log.warning("dropped %d rows (%s)", count, reason)
    dropped.update(here)
    return kept


def _cut(ids: list[int], limit: LengthLimit) -> list[int]:
    return ids[:limit.max_length] if limit.keep == "start" else ids[-limit.max_length:]


def tokenize_all(rows: list[dict], tokenize: Callable[[dict], Encoding], *, max_length: int, drop_long: bool,
                 dropped: Counter, split: str) -> list[Encoding]:
    """SFT and reward rows tokenized and fitted to train.max_length (`fit_to_length`, keeping their start); an SFT
    row whose cut leaves no assistant token to train on is dropped too."""

    def no_trained_tokens(encoding: Encoding) -> str | None:
        if "labels" in encoding and all(label == IGNORE_INDEX for label in encoding["labels"]):
            return f"no trained tokens left within train.max_length={max_length}"
        return None

    fitted = fit_to_length(rows, tokenize, LengthLimit(max_length, drop_long), dropped=dropped, split=split,
                           unusable=no_trained_tokens)
    return [encoding for _, encoding in fitted]
