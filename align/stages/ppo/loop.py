"""The PPO loop: rollout, rewards and advantages, PPO epochs, metrics, checkpoints; then the final save. Around it,
the lifecycle every stage shares (`align.stages.lifecycle`: output dir, config.yaml, tracker, plots, summary.json).

It calls `setup`, `update`, `checkpoint` and `rollout` through their modules, so that a test can patch one of them.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm

from align import generation
from align.observe import health
from align.rundir import StageResult
from align.stages import lifecycle
from align.stages.ppo import checkpoint, rollout, setup, update
from align.stages.ppo.config import PPOConfig


def run(cfg: PPOConfig) -> StageResult:
    """Train the policy for `train.max_steps` PPO updates (resuming from a checkpoint if asked); save it unless a
    fatal health alert stopped the run."""
    return lifecycle.run_stage(cfg, "ppo", partial(_train, cfg))


def _train(cfg: PPOConfig, run: lifecycle.StageRun) -> StageResult:
    out, ppo_cfg, tracker = run.output_dir, cfg.ppo, run.tracker
    parts = setup.build(cfg, run.resume_from)
    accelerator = parts.accelerator
    transformers.set_seed(cfg.train.seed + accelerator.process_index * 100003)  # each process samples differently
    start, record = checkpoint.load_checkpoint(parts, Path(run.resume_from)) if run.resume_from else (0, {})
    if run.schedule_changed():
        lifecycle.apply_schedule(parts.optimizer, parts.scheduler, cfg.train.learning_rate)
    if "ppo.kl_coef" in run.changes:  # the controller's saved coefficient would win otherwise
        parts.kl_controller.coef = ppo_cfg.kl_coef
    bar = tqdm(total=parts.total_updates, initial=start, desc="ppo", unit="update", dynamic_ncols=True,
               disable=not run.is_main)
    started, metrics, last = time.perf_counter(), {}, start
    first = record.get("scores_first")  # the run's first update, also when it resumed
    reporter = health.HealthReporter(health.HealthMonitor(cfg.tracking.health, max_steps=parts.total_updates),
                                     tracker)
    if "health" in record:
        reporter.load_state_dict(record["health"])
    try:
        for step in range(start + 1, parts.total_updates + 1):
            t0 = time.perf_counter()
            queries, _ = generation.padded(parts.prompts.next(), parts.sampler.pad_id, accelerator.device, side="left")
            with torch.no_grad():
                experience, timing = rollout.rollout(parts.sampler, parts.policy, parts.reference, parts.value_model,
                                                     parts.reward, parts.tokenizer, queries)
                shaped = update.shape_rewards(ppo_cfg, experience, parts.kl_controller.coef, accelerator.reduce)
            t1 = time.perf_counter()
            stats = update.ppo_epochs(cfg, parts, experience, shaped)
            timing.update(train=time.perf_counter() - t1, update=time.perf_counter() - t0)
            metrics, last = update.update_metrics(cfg, parts, experience, shaped, stats, timing, step), step
            first = metrics["objective/scores"] if first is None else first
            # Every update is checked, logged or not. Metrics are reduced over processes, so all of them stop
            # together on a NaN loss, before this update's broken weights can reach a checkpoint.
            reporter.observe(step, metrics)
            if step % cfg.train.logging_steps == 0 or reporter.stopped_on_fatal:
                tracker.log(metrics, step=step)
            if reporter.stopped_on_fatal:
                break
            parts.kl_controller.update(metrics["objective/kl"], ppo_cfg.rollout_batch_size)
            parts.scheduler.step()
            if ppo_cfg.sample_every and step % ppo_cfg.sample_every == 0:
                checkpoint.write_samples(parts, tracker, experience, shaped.scores, step)
            bar.update(1)
            bar.set_postfix_str(f"score {metrics['objective/scores']:.3f} | kl {metrics['objective/kl']:.3f} | "
                                f"{timing['update']:.2f} s/update")
            stopping = run.stop_requested()
            if step % cfg.train.save_steps == 0 or stopping:
                checkpoint.save_checkpoint(parts, out, step, keep=cfg.train.save_total_limit,
                                           record={"scores_first": first, "health": reporter.state_dict()})
            if stopping:
                raise run.terminated(step, at="update")
    finally:
        bar.close()  # also on an error, so that its message starts a line of its own
    totals = _run_metrics(time.perf_counter() - started, start, last, first, metrics)
    saved: dict[str, Any] = {}
    if run.is_main and reporter.fatal is None:
        saved = checkpoint.save_final(parts, out, merged=cfg.save_merged)
        tracker.log_model(out)
    result = run.finish(totals, fatal=reporter.fatal, at="update", data=parts.stage_data.report,
                        dropped=dict(parts.stage_data.dropped), **saved, health=reporter.summary(),
                        **({"probe": parts.probe} if parts.probe else {}))
    accelerator.wait_for_everyone()
    return result


def _run_metrics(runtime: float, start: int, last: int, first: float | None,
                 metrics: dict[str, Any]) -> dict[str, Any]:
    """summary.json's metrics: updates, this run's runtime per update (when it ran any), the run's first update's
    score and the last update's scores and KL."""
    totals: dict[str, Any] = {"steps": last}
    if last > start:
        totals.update(train_runtime_s=round(runtime, 2), s_per_update=round(runtime / (last - start), 3))
    if metrics:  # none when resuming a run that had already finished its updates
        totals.update({"objective/scores_first": first,
                       **{k: metrics[k] for k in ("objective/scores", "objective/kl", "objective/rlhf_reward")}})
    return totals
