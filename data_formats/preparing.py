"""Build train/eval row lists from several sources: load, deduplicate, split, then mix by weight.

Order of operations (all seeded by `seed`, all counted in the report):
1. load every source (`load_source`, same kind and on_error);
2. with `dedup`, drop exact duplicate rows: within train (first kept), within eval, and train rows that also
   appear in eval (eval stays intact: it is the reference);
3. split: explicit `eval` sources, or `eval_fraction` of each train source held out (per source, so every source
   is represented: round(n x fraction) rows, at least 1 and at most n - 1 when n >= 2);
4. mix train: a source with n train rows and weight w gives floor(w) copies of every row plus
   round((w - floor(w)) x n) more rows sampled without replacement; weight 1.0 = every row once, 0.5 = a random
   half, 2.0 = every row twice, 1.5 = every row once plus a random half. Rows keep file order within a source,
   sources keep the order given; the trainer's sampler shuffles.
Token lengths are left to the caller, which knows the tokenizer.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from data_formats.errors import DataFormatError
from data_formats.loading import Source, as_source, load_source
from data_formats.report import Report

log = logging.getLogger(__name__)


@dataclass
class PrepareReport:
    kind: str
    seed: int
    sources: list[Report] = field(default_factory=list)
    eval_sources: list[Report] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)
    """Rows removed after loading, by reason: duplicate_in_{train,eval}, train_row_in_eval."""
    mixing: list[dict[str, Any]] = field(default_factory=list)
    """Per train source: path, weight, rows (after filtering), eval_rows (held out), train_rows (after weighting)."""
    train_rows: int = 0
    eval_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "removed": dict(self.removed),
            "mixing": [dict(entry) for entry in self.mixing],
            "sources": [report.to_dict() for report in self.sources],
            "eval_sources": [report.to_dict() for report in self.eval_sources],
        }

    def summary(self) -> str:
        lines = [f"{self.kind}: {self.train_rows} train rows, {self.eval_rows} eval rows (seed {self.seed})"]
        lines += [report.summary() for report in self.sources + self.eval_sources]
        lines += [f"  mix {m['path']}: weight {m['weight']}, {m['rows']} rows -> {m['train_rows']} train, "
                  f"{m['eval_rows']} eval" for m in self.mixing]
        if self.removed:
            lines.append("  removed: " + ", ".join(f"{reason} {n}" for reason, n in self.removed.items()))
        return "\n".join(lines)


@dataclass
class Prepared:
    train: list[dict]
    eval: list[dict]
    report: PrepareReport
    eval_origins: list[str] = field(default_factory=list)
    """The path of the source each eval row came from, row by row (eval figures are reported per source)."""


def prepare(
    train: Sequence[Source | str],
    kind: str,
    *,
    eval: Sequence[Source | str] = (),
    eval_fraction: float = 0.0,
    on_error: str = "raise",
    dedup: bool = False,
    seed: int = 0,
) -> Prepared:
    """Load, deduplicate, split and mix sources into train and eval rows (steps in the module docstring).

    Args:
        train: train sources (Source, or a path / hub id); each one's `weight` sets its share of the mix.
        kind: the canonical kind every source is converted to.
        eval: explicit eval sources; excludes `eval_fraction`.
        eval_fraction: share of each train source held out for eval, in [0, 1).
        on_error: passed to `load_source`.
        dedup: drop exact duplicate rows (and train rows that also appear in eval).
        seed: seeds the eval split and the weighted sampling.

    Returns:
        Prepared: `.train`, `.eval` (lists of canonical dicts) and `.report` (a PrepareReport).

    Raises:
        DataFormatError: bad arguments, a source that fails to load, or no train rows left.
    """
    train_sources = [as_source(s) for s in train]
    eval_sources = [as_source(s) for s in eval]
    _check_arguments(train_sources, eval_sources, eval_fraction)
    report = PrepareReport(kind=kind, seed=seed)
    removed: Counter[str] = Counter()
    loaded = [load_source(s, kind, on_error=on_error) for s in train_sources]
    loaded_eval = [load_source(s, kind, on_error=on_error) for s in eval_sources]
    report.sources = [item.report for item in loaded]
    report.eval_sources = [item.report for item in loaded_eval]
    parts = [item.rows for item in loaded]
    eval_rows = [row for item in loaded_eval for row in item.rows]

    if dedup:
        eval_keys: set[str] = set()
        eval_rows = _unique(eval_rows, eval_keys, set(), removed, "eval")
        seen: set[str] = set()
        parts = [_unique(part, seen, eval_keys, removed, "train") for part in parts]

    rng = random.Random(seed)
    train_rows: list[dict] = []
    for source, part in zip(train_sources, parts, strict=True):
        kept, held_out = _split(part, eval_fraction, rng)
        eval_rows.extend(held_out)
        mixed = _weighted(kept, source.weight, rng)
        train_rows.extend(mixed)
        report.mixing.append({"path": source.path, "weight": source.weight, "rows": len(part),
                              "eval_rows": len(held_out), "train_rows": len(mixed)})
    if not train_rows:
        paths = ", ".join(s.path for s in train_sources)
        raise DataFormatError(f"no train rows left from {paths}:\n{report.summary()}")
    report.removed = dict(removed)
    report.train_rows, report.eval_rows = len(train_rows), len(eval_rows)
    log.debug("%s", report.summary())  # callers report it (align.data logs it, `align data convert` prints it)
    # Deduplication and splitting keep the row objects, so identity finds each eval row's source.
    origin = {id(row): source.path for item, source in zip(loaded + loaded_eval, train_sources + eval_sources)
              for row in item.rows}
    return Prepared(train_rows, eval_rows, report, [origin[id(row)] for row in eval_rows])


def _check_arguments(train: list[Source], eval_sources: list[Source], eval_fraction: float) -> None:
    if not train:
        raise DataFormatError("prepare needs at least one train source")
    if eval_sources and eval_fraction:
        raise DataFormatError("give either eval sources or eval_fraction, not both")
    if type(eval_fraction) not in (int, float) or not 0 <= eval_fraction < 1:
        raise DataFormatError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    for source in eval_sources:
        if source.weight != 1.0:
            raise DataFormatError(f"{source.path}: weights apply to train sources only; eval rows are used as they are")


def row_key(row: dict) -> str:
    """Identity of a canonical row for exact-duplicate detection."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def _unique(rows: list[dict], seen: set[str], banned: set[str], removed: Counter[str], side: str) -> list[dict]:
    """Rows not seen before (keys added to `seen`, shared across calls) and not in `banned` (the eval rows)."""
    kept = []
    for row in rows:
        key = row_key(row)
        if key in banned:
            removed["train_row_in_eval"] += 1
        elif key in seen:
            removed[f"duplicate_in_{side}"] += 1
        else:
            seen.add(key)
            kept.append(row)
    return kept


def _split(rows: list[dict], fraction: float, rng: random.Random) -> tuple[list[dict], list[dict]]:
    n = len(rows)
    if not fraction or n < 2:
        return rows, []
    count = min(max(math.floor(n * fraction + 0.5), 1), n - 1)
    held = set(rng.sample(range(n), count))
    return [row for i, row in enumerate(rows) if i not in held], [row for i, row in enumerate(rows) if i in held]


def _weighted(rows: list[dict], weight: float, rng: random.Random) -> list[dict]:
    copies = math.floor(weight)
    extra = math.floor((weight - copies) * len(rows) + 0.5)
    sampled = sorted(rng.sample(range(len(rows)), extra)) if extra else []
    return rows * copies + [rows[i] for i in sampled]

