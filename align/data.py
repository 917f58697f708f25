"""Stage data: read every configured source through `data_formats`, then tokenize for the stage's trainer."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import data_formats
from align.sections import DataConfig

log = logging.getLogger(__name__)


@dataclass
class StageData:
    train: list[dict]
    eval: list[dict]
    report: dict[str, Any]
    dropped: Counter = field(default_factory=Counter)
    """Rows dropped by the stage after formatting (too long, nothing left to train on), counted by reason."""
    eval_origins: list[str] = field(default_factory=list)
    """The source path of each eval row, in order."""


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


def tokenize_all(rows: list[dict], tokenize: Callable[[dict], dict], *, max_length: int, drop_long: bool,
                 dropped: Counter, split: str) -> list[dict]:
    """Tokenize rows, truncating (or, with drop_long, dropping) those over max_length; every drop is counted.

    A row's length is its longest token list: `input_ids`, or the longer of a pair's `chosen_ids` / `rejected_ids`.
    """
    out = []
    truncated = 0
    for row in rows:
        enc = tokenize(row)
        if max(len(ids) for ids in enc.values()) > max_length:
            if drop_long:
                dropped[f"{split}: longer than train.max_length={max_length}"] += 1
                continue
            truncated += 1
            enc = {k: v[:max_length] for k, v in enc.items()}
        if "labels" in enc and all(label == -100 for label in enc["labels"]):
            dropped[f"{split}: no trained tokens left within train.max_length={max_length}"] += 1
            continue
        out.append(enc)
    if truncated:
        log.info("%s: truncated %d of %d rows to %d tokens", split, truncated, len(rows), max_length)
    for reason, count in dropped.items():
        if reason.startswith(split):
            log.warning("dropped %d rows (%s)", count, reason)
    return out
