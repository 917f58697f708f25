"""Finished stage runs that several tests only read, so the stage trains once for all of them (the fixtures in
tests/conftest.py and tests/stages/ppo/test_ppo_loop.py). A test that needs its own config (resume, LoRA, a broken
model) runs its own stage instead.

A fixture wider than one test runs before the autouse fixtures of tests/conftest.py, so `isolated_env` gives it the same
environment they give a test: offline, no W&B, a cache dir of its own, and the stage's plots only if asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def set_test_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path / "align-cache"))


def skip_stage_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished stage draws its metric curves with matplotlib, about half a second a PNG: most of a tiny run's
    time, so a run draws them only where a test looks at them."""
    from align.observe import plots

    monkeypatch.setattr(plots, "plot_finished_run", lambda output_dir: [])


@contextmanager
def isolated_env(tmp_path: Path, *, plots: bool) -> Iterator[pytest.MonkeyPatch]:
    """The environment of a test, for a session- or module-scoped fixture; undone on leaving."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_test_env(monkeypatch, tmp_path)
        if not plots:
            skip_stage_plots(monkeypatch)
        yield monkeypatch


@dataclass
class FinishedRun:
    cfg: Any
    result: Any
    """The stage's StageResult."""
    inputs: dict[str, Path]
    """The data files it trained and evaluated on, by split."""
    seen: dict[str, Any]
    """What a test can no longer see once the run is over: the built trainer, weights before training, whether TRL's
    fused head was patched during the build."""

    @property
    def out(self) -> Path:
        return self.result.output_dir

    def summary(self) -> dict[str, Any]:
        import json

        return json.loads((self.out / "summary.json").read_text())


def watch_fused_head(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Put back TRL's own fused-head test (an earlier build in this process replaced it), so a run shows whether its
    build applies align.stages.fused_head; returns TRL's utils module to look at afterwards."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    return trl_utils


def fused_head_applied(trl_utils: Any) -> bool:
    from align.stages import fused_head

    return trl_utils._use_triton is fused_head._compact_everywhere_but_compiled
