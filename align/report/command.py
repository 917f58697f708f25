"""`align report`: read the run dir, render the page, write it (by default to <run_dir>/report.html)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from align.errors import ConfigError
from align.report import collect, page
from align.report.config import ReportConfig

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"


def run(cfg: ReportConfig) -> Path:
    """Write the report and return its path."""
    problems = cfg.check()
    if problems:
        raise ConfigError("; ".join(problems))
    found = collect.collect(cfg.run_dir)
    html = page.render(found, shown_samples=cfg.samples, generated_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    out = Path(cfg.out) if cfg.out else Path(cfg.run_dir) / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    log.info("wrote %s (%d stages, %d kB)", out, len(found.stages), len(html) // 1024)
    return out
