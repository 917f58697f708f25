"""ReportConfig: the options of `align report`, as command-line options, a YAML file or KEY=VALUE overrides."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    """The options of `align report`."""

    run_dir: str
    """A stage's output dir, or a pipeline run dir (each stage in its own sub-dir); eval and probe results inside
    either are found too."""
    out: str | None = None
    """The HTML file to write (default: <run_dir>/report.html)."""
    samples: int = 8
    """Prompts shown in each side-by-side table of sampled replies."""

    def check(self) -> list[str]:
        return [f"samples: must be >= 1, got {self.samples}"] if self.samples < 1 else []
