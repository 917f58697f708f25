"""ProbeConfig: the options of `align probe`, as command-line options, a YAML file or KEY=VALUE overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class ProbeConfig:
    """The options of `align probe`."""

    stage: Literal["probe"] = "probe"
    """Names the command this file configures, so `align validate` can tell (not an option)."""
    reward_model: str
    """The reward model to probe: a reward stage's output dir (or any one-label sequence classifier)."""
    data: str
    """Preference pairs (any format `align data inspect` reads); their chosen replies are degraded."""
    out: str | None = None
    """Where probe.json and probe.md go (default: <reward_model>/probe)."""
    num_samples: int = 200
    """Pairs probed: the first N of the file."""
    threshold: float = 0.5
    """A variant fails when it outscores the original in more than this fraction of cases."""
    on_error: Literal["raise", "skip"] = "raise"
    """raise: stop at malformed rows, naming file, row and reason. skip: drop them and count them in the report."""
    batch_size: int = 8
    """Replies per forward pass."""
    max_length: int = 1024
    """Tokens of prompt + reply the reward model reads; longer texts lose their start (the reply's end stays)."""
    bootstrap_samples: int = 1000
    """Resamples for each variant's confidence interval."""
    seed: int = 0
    """Seed for the bootstrap."""
    num_threads: int = 0
    """CPU threads for torch (0: one per core this process may use)."""

    def check(self) -> list[str]:
        problems = []
        for name in ("num_samples", "batch_size", "max_length", "bootstrap_samples"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.threshold <= 1:
            problems.append(f"threshold: must be within [0, 1], got {self.threshold}")
        if self.num_threads < 0:
            problems.append(f"num_threads: must be >= 0, got {self.num_threads}")
        return problems
