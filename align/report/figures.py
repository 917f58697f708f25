"""The report's images as data URIs, so the page needs no file beside it: a stage's curves, drawn from its
metrics.jsonl by align.observe.plots (the same PNGs a stage writes to plots/), and PNG files such as `align eval`'s charts."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

from align.observe import plots
from align.rundir import METRICS_FILE

FIRST_GROUPS = ("loss",)
"""Curve groups shown before the others (alphabetical after them)."""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_file(path: Path) -> str:
    return data_uri(path.read_bytes())


def curves(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(group, data URI) of each metric group's curves, from metrics.jsonl records. Drawn afresh in a temporary dir
    rather than read from the stage's plots/, which is written when the stage finishes and so is missing or stale
    while it runs."""
    with tempfile.TemporaryDirectory(prefix="align-report-") as tmp:
        lines = "".join(json.dumps(record) + "\n" for record in records)
        (Path(tmp) / METRICS_FILE).write_text(lines, encoding="utf-8")
        drawn = plots.plot_run(tmp)
        images = {path.stem: png_file(path) for path in drawn}
    order = sorted(images, key=lambda group: (group not in FIRST_GROUPS, group))
    return [(group, images[group]) for group in order]
