"""`align probe`: does a reward model prefer degraded replies? Run on held-out pairs' chosen replies; the reward
stage runs it on its eval pairs and the PPO stage on its starting policy's replies (align.probe.gate), both through
scoring.score_and_write."""

from __future__ import annotations

import logging
from pathlib import Path

import data_formats
from align import config, models
from align.errors import ConfigError
from align.eval import judges
from align.eval.baselines import reply_text
from align.probe import results, scoring
from align.probe.config import ProbeConfig

log = logging.getLogger(__name__)


def run(cfg: ProbeConfig) -> results.ProbeResult:
    models.configure_threads(cfg.num_threads)
    loaded = data_formats.load_source(cfg.data, "preference", on_error=cfg.on_error)
    pairs = loaded.rows[:cfg.num_samples]
    if not pairs:
        raise ConfigError(f"data: {cfg.data} has no preference pairs")
    out = Path(cfg.out) if cfg.out else Path(cfg.reward_model) / "probe"
    config.save_config(cfg, out)
    judge = judges.RewardModelJudge.load(models.resolve_path(cfg.reward_model), models.device(),
                                         cfg.batch_size, cfg.max_length)
    log.info("probing %s on the chosen replies of %d pairs from %s", cfg.reward_model, len(pairs), cfg.data)
    result = scoring.score_and_write(judge, [p["prompt"] for p in pairs], [reply_text(p["chosen"]) for p in pairs],
                                     reward_model=cfg.reward_model, threshold=cfg.threshold, out=out,
                                     batch_size=cfg.batch_size, bootstrap_samples=cfg.bootstrap_samples,
                                     seed=cfg.seed)
    if judge.truncated:
        log.info("%d scored texts were over max_length=%d tokens and lost their start", judge.truncated,
                 cfg.max_length)
    return result
