"""Score good replies and their degraded variants with one judge, summarise what the judge preferred, and write it
(probe.json, probe.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from align.eval import metrics
from align.probe import results, variants

if TYPE_CHECKING:
    from align.eval.judges import RewardModelJudge

log = logging.getLogger(__name__)

Score = Callable[[list[list[dict]], list[list[dict]]], list[float]]
"""A judge's score(prompts, replies): chat messages in, one float per reply out."""


def last_user_text(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def probe(score: Score, prompts: list[list[dict]], replies: list[str], *, reward_model: str, threshold: float,
          interval: results.Interval, batch_size: int, progress=None) -> results.ProbeResult:
    """Every variant of every reply, scored by `score` beside the reply itself. `progress(n)` is told of each batch
    of n replies scored."""
    jobs = _jobs(prompts, replies)
    scores: list[float] = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        scores += score([prompts[i] for _, i, _ in batch],
                        [[{"role": "assistant", "content": text}] for _, _, text in batch])
        if progress:
            progress(len(batch))
    originals = scores[:len(replies)]
    scored: dict[str, list[tuple[int, float]]] = {name: [] for name in variants.VARIANTS}
    for (name, i, _), value in zip(jobs[len(replies):], scores[len(replies):], strict=True):
        scored[name].append((i, value))
    result = results.summarise(reward_model, threshold, originals, scored, interval)
    log.info("probe of %s: worst variant %s (degraded scored higher in %.0f%% of %d)", reward_model, result.worst,
             100 * result.variants[result.worst].win_rate, result.variants[result.worst].n)
    return result


def _jobs(prompts: list[list[dict]], replies: list[str]) -> list[tuple[str | None, int, str]]:
    """(variant or None for the original, index of the original, text) of every reply `probe` scores, originals
    first."""
    jobs: list[tuple[str | None, int, str]] = [(None, i, reply) for i, reply in enumerate(replies)]
    for name, make in variants.VARIANTS.items():
        for i, reply in enumerate(replies):
            degraded = make(reply, last_user_text(prompts[i]))
            if degraded is not None:
                jobs.append((name, i, degraded))
    return jobs


def job_count(replies: list[str], prompts: list[list[dict]]) -> int:
    """How many replies `probe` scores, for a progress bar."""
    return len(_jobs(prompts, replies))


def score_and_write(judge: RewardModelJudge, prompts: list[list[dict]], replies: list[str], *,
                    reward_model: str, threshold: float, out: Path, batch_size: int, bootstrap_samples: int = 1000,
                    seed: int = 0) -> results.ProbeResult:
    """Probe `judge` on these replies, with a progress bar, and write probe.json and probe.md into `out`."""
    from tqdm.auto import tqdm

    interval = partial(metrics.bootstrap_ci, samples=bootstrap_samples, seed=seed)
    with tqdm(total=job_count(replies, prompts), desc="probe", unit="reply", dynamic_ncols=True) as bar:
        result = probe(judge.score, prompts, replies, reward_model=reward_model, threshold=threshold,
                       interval=interval, batch_size=batch_size, progress=bar.update)
    out.mkdir(parents=True, exist_ok=True)
    (out / results.PROBE_FILE).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    (out / "probe.md").write_text(results.markdown(result), encoding="utf-8")
    return result
