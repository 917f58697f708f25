"""`align eval`: a policy (or each stage of a pipeline run) against its reference, on pairs and sampled replies.

config: EvalConfig. command: build and run. metrics: the numbers from scores and log-probs. scoring: log-prob passes.
judges: reward-model and rule judges. report: eval.json, eval.md, samples.jsonl and charts. Importing this package
stays torch-free and light (the CLI builds `align eval --help` from EvalConfig), so `run` imports the command on call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from align.eval.config import EvalConfig

if TYPE_CHECKING:
    from align.eval.command import EvalResult


def run(cfg: EvalConfig) -> EvalResult:
    """Evaluate and write the report; see align.eval.command.run."""
    from align.eval import command

    return command.run(cfg)


__all__ = ["EvalConfig", "run"]
