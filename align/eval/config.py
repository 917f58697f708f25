"""EvalConfig: the options of `align eval`, whether given as command-line options, a YAML file or KEY=VALUE overrides.

The command line is generated from these fields (align.config.add_options): a field's help text is the docstring
under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class EvalConfig:
    """The options of `align eval`."""

    stage: Literal["eval"] = "eval"
    """Names the command this file configures, so `align validate` can tell (not an option)."""
    policy: str
    """A policy checkpoint dir (or LoRA adapter dir), or a pipeline run dir to compare its stages."""
    data: str
    """A data file (any format `align data inspect` reads); preference pairs also give the pair metrics."""
    reference: str | None = None
    """The reference policy (the DPO/PPO reference, usually the SFT output). Pipeline runs: the first stage."""
    judge: str | None = None
    """reward:DIR (a reward model) or rule:module:function / rule:path.py:function (fn(prompts, completions))."""
    judge_max_length: int = 1024
    """Tokens of prompt + reply a reward:DIR judge reads; longer texts lose their start (the reply's end stays)."""
    out: str | None = None
    """Where the report goes (default: <policy>/eval)."""
    max_new_tokens: int = 128
    """Reply length limit in tokens."""
    num_samples: int = 100
    """Rows evaluated: the first N of the file (pairs and prompts each)."""
    on_error: Literal["raise", "skip"] = "raise"
    """raise: stop at malformed rows, naming file, row and reason. skip: drop them and count them in the report."""
    seed: int = 0
    """Seed for sampling and for the bootstrap."""
    temperature: float = 1.0
    """Sampling temperature; 0 decodes greedily. KL estimates are unbiased only at 1."""
    beta: float = 0.1
    """DPO beta for the implicit rewards and margins (their accuracy does not depend on it)."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """Per-token KL estimator (align.rl.kl_estimate); k3 is unbiased and never negative."""
    batch_size: int = 8
    """Rows per forward pass / generate call."""
    bootstrap_samples: int = 1000
    """Resamples of the prompts for the win rate's confidence interval."""
    num_threads: int = 0
    """CPU threads for torch (0: one per core this process may use)."""

    def check(self) -> list[str]:
        problems = []
        for name in ("max_new_tokens", "num_samples", "batch_size", "bootstrap_samples", "judge_max_length"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.num_threads < 0:
            problems.append(f"--num-threads: must be >= 0, got {self.num_threads}")
        if self.temperature < 0:
            problems.append(f"--temperature: must be >= 0, got {self.temperature}")
        if self.beta <= 0:
            problems.append(f"--beta: must be > 0, got {self.beta}")
        if self.kl_estimator not in ("k1", "k3"):
            problems.append(f"--kl-estimator: must be k1 or k3, got {self.kl_estimator!r}")
        return problems
