"""Reward-model exploit probe: degraded variants of good replies (variants), scored beside them (scoring), summarised
with intervals and gated (results); `align probe` is command.run. Importing the package stays torch-free."""

from align.probe.config import ProbeConfig

__all__ = ["ProbeConfig"]
