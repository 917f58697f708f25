"""`align probe`: does a reward model prefer degraded replies? Run on held-out pairs' chosen replies; the reward
stage runs it on its eval pairs and the PPO stage on its starting policy's replies (align.probe.gate)."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import data_formats
from align import config, models
from align.errors import ConfigError
from align.eval import judges, metrics
from align.eval.baselines import reply_text
from align.probe import results, scoring
from align.probe.config import ProbeConfig

log = logging.getLogger(__name__)


def score_and_write(judge: judges.RewardModelJudge, prompts: list[list[dict]], replies: list[str], *,
                    reward_model: str, threshold: float, out: Path, batch_size: int, bootstrap_samples: int = 1000,
                    seed: int = 0) -> results.ProbeResult:
    """Probe `judge` on these replies, with a progress bar, and write probe.json and probe.md into `out`."""
    from tqdm.auto import tqdm

    interval = partial(metrics.bootstrap_ci, samples=bootstrap_samples, seed=seed)
    with tqdm(total=scoring.job_count(replies, prompts), desc="probe", unit="reply", dynamic_ncols=True) as bar:
        result = scoring.probe(judge.score, prompts, replies, reward_model=reward_model, threshold=threshold,
                               interval=interval, batch_size=batch_size, progress=bar.update)
    out.mkdir(parents=True, exist_ok=True)
    (out / results.PROBE_FILE).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    (out / "probe.md").write_text(results.markdown(result), encoding="utf-8")
    return result


def run(cfg: ProbeConfig) -> results.ProbeResult:
    models.configure_threads(cfg.num_threads)
    loaded = data_formats.load_source(cfg.data, "preference", on_error=cfg.on_error)
    pairs = loaded.rows[:cfg.num_samples]
    if not pairs:
        raise ConfigError(f"data: {cfg.data} has no preference pairs")
    out = Path(cfg.out) if cfg.out else Path(cfg.reward_model) / "probe"
    config.save_config(cfg, out)
    judge = judges.RewardModelJudge.load(models.resolve_path(cfg.reward_model), "cpu" if models.use_cpu() else "cuda",
                                    cfg.batch_size)
    log.info("probing %s on the chosen replies of %d pairs from %s", cfg.reward_model, len(pairs), cfg.data)
    return score_and_write(judge, [p["prompt"] for p in pairs], [reply_text(p["chosen"]) for p in pairs],
                           reward_model=cfg.reward_model, threshold=cfg.threshold, out=out,
                           batch_size=cfg.batch_size, bootstrap_samples=cfg.bootstrap_samples, seed=cfg.seed)
