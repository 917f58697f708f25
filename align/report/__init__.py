"""`align report`: one self-contained HTML page about a stage or a pipeline run (no server, no network, plots
embedded): lineage, curves, eval tables with intervals, probe results, health alerts, sampled replies side by side,
and cost.

config: ReportConfig. collect: the run dir read into plain dataclasses. figures: PNGs as data URIs. page: the HTML.
command: collect, render, write. Importing this package stays light (the CLI builds `align report --help` from
ReportConfig), so `run` imports the command on call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from align.report.config import ReportConfig

if TYPE_CHECKING:
    from pathlib import Path


def run(cfg: ReportConfig) -> Path:
    """Write the report and return its path; see align.report.command.run."""
    from align.report import command

    return command.run(cfg)


__all__ = ["ReportConfig", "run"]
