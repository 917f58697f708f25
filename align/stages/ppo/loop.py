"""The PPO loop: rollout, rewards and advantages, PPO epochs, metrics, checkpoints; then the final save.

It calls `setup`, `update`, `checkpoint` and `rollout` through their modules, so that a test can patch one of them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from align import config, health, plots, runner
from align.runner import StageResult
from align.stages.ppo import checkpoint, rollout, setup, update
from align.stages.ppo.config import PPOConfig
from align.tracking import Tracker

log = logging.getLogger(__name__)


def run(cfg: PPOConfig) -> StageResult:
    """Train the policy for `train.max_steps` PPO updates (resuming from a checkpoint if asked); save it unless a
    fatal health alert stopped the run."""
    out, ppo_cfg = Path(cfg.train.output_dir), cfg.ppo
    resume_from = runner.prepare_output_dir(cfg.train)
    is_main = runner.is_main_process()
    if is_main:
        config.save_config(cfg, out)
    tracker = Tracker(cfg.tracking, out, stage="ppo", run_config=config.to_dict(cfg), is_main=is_main)
    try:
        parts = setup.build(cfg, resume_from)
        accelerator = parts.accelerator
        transformers.set_seed(cfg.train.seed + accelerator.process_index * 100003)  # each process samples differently
        start = checkpoint.load_checkpoint(parts, Path(resume_from)) if resume_from else 0
        bar = tqdm(total=parts.total_updates, initial=start, desc="ppo", unit="update", dynamic_ncols=True,
                   disable=not is_main)
        started, first, metrics, last = time.perf_counter(), {}, {}, start
        reporter = health.HealthReporter(health.HealthMonitor(cfg.tracking.health, max_steps=parts.total_updates),
                                         tracker)
        for step in range(start + 1, parts.total_updates + 1):
            t0 = time.perf_counter()
            queries = rollout.left_pad(parts.prompts.next(), parts.sampler.pad_id, accelerator.device)
            with torch.no_grad():
                experience, timing = rollout.rollout(parts.sampler, parts.policy, parts.reference, parts.value_model,
                                                     parts.reward, parts.tokenizer, queries)
                shaped = update.shape_rewards(ppo_cfg, experience, parts.kl_controller.coef, accelerator.reduce)
            t1 = time.perf_counter()
            stats = update.ppo_epochs(cfg, parts, experience, shaped)
            timing.update(train=time.perf_counter() - t1, update=time.perf_counter() - t0)
            metrics, last = update.update_metrics(cfg, parts, experience, shaped, stats, timing, step), step
            first = first or metrics
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
                checkpoint.write_samples(parts, tracker, experience, shaped.scores, step, out)
            bar.update(1)
            bar.set_postfix_str(f"score {metrics['objective/scores']:.3f} | kl {metrics['objective/kl']:.3f} | "
                                f"{timing['update']:.2f} s/update")
            if step % cfg.train.save_steps == 0:
                checkpoint.save_checkpoint(parts, out, step, keep=cfg.train.save_total_limit)
        bar.close()
        runtime = time.perf_counter() - started
        summary = {"steps": last, "train_runtime_s": round(runtime, 2),
                   "s_per_update": round(runtime / max(1, last - start), 3)}
        if metrics:  # none when resuming a run that had already finished its updates
            summary.update({"objective/scores_first": first["objective/scores"],
                            **{k: metrics[k] for k in ("objective/scores", "objective/kl", "objective/rlhf_reward")}})
        fatal = reporter.fatal
        stopped = {"stopped": f"stopped on the fatal health alert {fatal.name} at update {fatal.step}"} if fatal else {}
        if is_main:
            plots.plot_finished_run(out)
            if fatal:
                record = {"stage": "ppo", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": summary,
                          "data": parts.stage_data.report, "dropped": dict(parts.stage_data.dropped),
                          "stopping": runner.stopped_by(fatal, out)}
                log.warning("ppo stopped at update %d on %s; the final model was not saved, the last checkpoint "
                            "(%s) holds the latest good weights", last, fatal.name,
                            record["stopping"]["last_checkpoint"])
            else:
                checkpoint.save_final(parts, out, summary, merged=cfg.save_merged)
                tracker.log_model(out)
                record = json.loads((out / runner.SUMMARY).read_text(encoding="utf-8"))
            record["health"] = reporter.summary()  # save_final knows nothing of health: summary.json gets it here
            (out / runner.SUMMARY).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        accelerator.wait_for_everyone()
        tracker.summary(summary)
    finally:
        notes = tracker.finish()
    return StageResult(stage="ppo", output_dir=out, metrics=summary, notes={**notes, **stopped})
