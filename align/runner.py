"""Run a TRL trainer the way every stage does: output-dir rules, resume, tracking, progress, final save, summary.

A run's output dir holds `checkpoint-N/` folders while training, then the final model, `config.yaml`,
`metrics.jsonl` and `summary.json`, which is written last and marks the stage as finished.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align import models
from align.errors import ConfigError
from align.sections import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class StageResult:
    stage: str
    output_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def summary_line(self) -> str:
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in self.metrics.items() if k in _SUMMARY_KEYS)
        return f"{self.stage} done: {shown} -> {self.output_dir}"


_SUMMARY_KEYS = ("steps", "train_loss", "eval_loss", "eval_accuracy", "eval_rewards/accuracies",
                 "eval_rewards/margins", "train_runtime_s", "tokens_per_s", "s_per_update", "objective/scores_first",
                 "objective/scores", "objective/kl")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def distributed_state():
    """accelerate's process state. Created with cpu=True when there is no GPU: otherwise processes started by
    `accelerate launch --multi_gpu` on a CPU-only machine would each think they are alone."""
    from accelerate import PartialState

    return PartialState(cpu=models.use_cpu())


def is_main_process() -> bool:
    """True on the process that writes files and logs (rank 0 under accelerate, or the only process)."""
    return distributed_state().is_main_process


def checkpoints(output_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) checkpoints, oldest first.

    The trainer writes trainer_state.json last, so its presence marks a checkpoint as complete.
    """
    found = []
    for path in output_dir.iterdir() if output_dir.is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    complete = [path for _, path in sorted(found) if (path / "trainer_state.json").is_file()]
    incomplete = [path for _, path in sorted(found) if path not in complete]
    return complete, incomplete


def prepare_output_dir(train: TrainConfig) -> str | None:
    """Apply the resume/overwrite rules; return the checkpoint to resume from, if any.

    Every process checks (so all raise the same error); only the main process moves or deletes files.
    """
    out = Path(train.output_dir)
    complete, incomplete = checkpoints(out)
    finished = (out / SUMMARY).is_file()
    if not train.resume and (complete or finished) and not train.overwrite:
        raise ConfigError(
            f"train.output_dir: {out} already holds a run ({'finished' if finished else 'checkpoints'}). "
            "Set train.resume=true to continue it, train.overwrite=true to start over, or choose another dir."
        )
    state = distributed_state()
    if state.is_main_process:
        for path in incomplete:
            # Killed while writing: keep it for inspection, but out of the trainer's resume and rotation.
            aside = path.with_name(f"incomplete-{path.name}")
            log.warning("%s is incomplete (no trainer_state.json); moved to %s", path, aside.name)
            path.rename(aside)
        if not train.resume and train.overwrite and (complete or finished):
            log.info("train.overwrite=true: removing the previous run's checkpoints and summary in %s", out)
            for path in complete:
                shutil.rmtree(path)
            for name in (SUMMARY, "metrics.jsonl", "completions.jsonl", "samples.jsonl"):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "plots", ignore_errors=True)
    state.wait_for_everyone()
    if not train.resume:
        return None
    if complete:
        log.info("resuming from %s", complete[-1])
        return str(complete[-1])
    log.info("train.resume=true but %s holds no checkpoint; starting from the beginning", out)
    return None


def check_trainer_overrides(overrides: dict[str, Any], trl_config: str, owned: dict[str, str]) -> list[str]:
    """Problems with `trainer_overrides`: not a field of `trl.<trl_config>`, or a knob the stage sets (`owned`)."""
    if not overrides:
        return []
    import trl

    valid = [f.name for f in dataclasses.fields(getattr(trl, trl_config))]
    problems = []
    for key in overrides:
        if key in owned:
            problems.append(f"trainer_overrides.{key}: set by align; use {owned[key]} instead")
        elif key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"trainer_overrides.{key}: not a field of trl.{trl_config}.{hint}")
    return problems


# Which of our keys sets each TrainingArguments field, for the trainer_overrides error message.
OWNED_ARGUMENTS = {
    "output_dir": "train.output_dir", "num_train_epochs": "train.epochs", "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.batch_size", "per_device_eval_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum", "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.lr_scheduler", "warmup_steps": "train.warmup_ratio",
    "weight_decay": "train.weight_decay", "max_grad_norm": "train.max_grad_norm", "seed": "train.seed",
    "logging_steps": "train.logging_steps", "eval_strategy": "train.eval_steps", "eval_steps": "train.eval_steps",
    "save_steps": "train.save_steps", "save_total_limit": "train.save_total_limit", "bf16": "model.dtype",
    "fp16": "model.dtype", "gradient_checkpointing": "model.gradient_checkpointing", "max_length": "train.max_length",
    "report_to": "tracking.backend", "use_cpu": "(automatic: CPU when no GPU)",
}


def early_stopping_target(train: TrainConfig, default_metric: str) -> tuple[str, bool]:
    """(metric, greater_is_better) for early stopping and best-checkpoint selection."""
    metric = train.early_stopping.metric or default_metric
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    mode = train.early_stopping.mode
    greater = ("loss" not in metric) if mode == "auto" else mode == "max"
    return metric, greater


def training_arguments(train: TrainConfig, model: ModelConfig, *, has_eval: bool,
                       default_metric: str = "eval_loss") -> dict[str, Any]:
    """The TrainingArguments every stage shares, derived from our config; stages add their own on top."""
    eval_every = train.eval_steps if has_eval and train.eval_steps else None
    if train.early_stopping.enabled and not has_eval:
        raise ConfigError("train.early_stopping.enabled: needs eval data; set data.eval or data.eval_fraction")
    stopping: dict[str, Any] = {}
    if train.early_stopping.enabled:
        metric, greater = early_stopping_target(train, default_metric)
        stopping = {"load_best_model_at_end": True, "metric_for_best_model": metric, "greater_is_better": greater}
    return {
        "output_dir": train.output_dir,
        "num_train_epochs": train.epochs,
        "max_steps": train.max_steps,
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler,
        "warmup_steps": train.warmup_ratio,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "seed": train.seed,
        "logging_steps": train.logging_steps,
        "eval_strategy": "steps" if eval_every else "no",
        "eval_steps": eval_every,
        "save_strategy": "steps",
        "save_steps": train.save_steps,
        "save_total_limit": train.save_total_limit,
        "gradient_checkpointing": model.gradient_checkpointing,
        "report_to": [],
        "use_cpu": models.use_cpu(),
        "include_num_input_tokens_seen": True,
        "disable_tqdm": False,
        # Parameters frozen after DDP wraps the model would otherwise stall its gradient reduction.
        "ddp_find_unused_parameters": True if model.freeze.active() else None,
        **stopping,
        **models.precision_flags(models.resolve_dtype(model.dtype)),
    }


def pair_eval_batch_size(pairs: int, batch_size: int) -> int:
    """The largest eval batch size <= batch_size that splits `pairs` into equal batches.

    TRL's reward and DPO trainers log the mean of per-batch accuracies; with equal batches that mean is the exact
    accuracy over every eval pair (on one process).
    """
    return max(size for size in range(1, batch_size + 1) if pairs % size == 0) if pairs else batch_size


@dataclass
class Controls:
    """Training controls shared by the TRL stages: health alerts, freezing schedule, early stopping, sampled
    completions; and the tracker, which also receives the final model."""

    callbacks: list[Any]
    tracker: Any
    health: Any = None
    """The health callback (a `health.HealthReporter`): its alerts go to summary.json; a fatal one skips the save."""
    freeze: Any = None
    early_stopping: bool = False

    @property
    def stopped_on_fatal(self) -> bool:
        return self.health is not None and self.health.stopped_on_fatal

    def summary(self, state) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.health is not None:
            out["health"] = self.health.summary()
        if self.freeze is not None:
            out["freeze_phases"] = self.freeze.phases
        if self.early_stopping:
            stopped = state.global_step < state.max_steps
            out["stopping"] = {
                "reason": "no improvement in the eval metric (early stopping)" if stopped else "reached max steps",
                "best_checkpoint": state.best_model_checkpoint,
                "best_metric": state.best_metric,
                "final_model": "best checkpoint",
            }
        return out


def controls(cfg: Any, model, tracker, *, tokenizer=None, stage_data=None) -> Controls:
    """The callbacks a stage's trainer needs: tracking and health alerts, then freezing, early stopping and sampled
    completions when configured. Completions need `tokenizer` and `stage_data` (SFT and DPO pass them)."""
    from align import freezing, health

    found = Controls(callbacks=[tracker.callback()], tracker=tracker)
    found.health = health.health_callback(health.HealthMonitor(cfg.tracking.health), tracker)
    found.callbacks.append(found.health)
    found.freeze = freezing.plan(cfg.model.freeze, model)
    if found.freeze is not None:
        found.callbacks.append(freezing.FreezeCallback(cfg.model.freeze, found.freeze))
    if cfg.train.early_stopping.enabled:
        from transformers import EarlyStoppingCallback

        found.early_stopping = True
        found.callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping.patience,
                                                     early_stopping_threshold=cfg.train.early_stopping.threshold))
    every = cfg.tracking.completions_every
    if every and stage_data is None:
        log.info("tracking.completions_every: this stage samples no completions; ignored")
    elif every:
        from align import completions

        found.callbacks.append(completions.completions_callback(
            completion_prompts(stage_data, cfg.tracking.completions_prompts), every, tokenizer=tokenizer,
            tracker=tracker, max_new_tokens=cfg.tracking.completions_max_new_tokens, seed=cfg.train.seed,
            health=found.health))
    return found


def completion_prompts(stage_data, count: int) -> list[list[dict]]:
    """The prompts of the first `count` eval rows (else train rows): a pair's prompt, an sft conversation without
    its final reply. Rows with tool schemas are left out (sampling renders no tools)."""
    from data_formats.kinds import to_prompt

    rows = [row for row in stage_data.eval or stage_data.train if not row.get("tools")]
    if not rows:
        raise ConfigError("tracking.completions_every: every row has tools, and sampling renders none; set it to 0")
    return [to_prompt(row)["prompt"] for row in rows[:count]]


def train_and_save(trainer, *, stage: str, output_dir: str | Path, resume_from: str | None,
                   has_eval: bool, save: Callable[[Path], None], extra_summary: dict[str, Any],
                   stage_controls: Controls | None = None,
                   held_out_checks: Callable[[Path], dict[str, Any]] | None = None) -> StageResult:
    """Train (resuming if asked), evaluate, save the final model with `save`, plot the curves, then write
    summary.json last.

    After a fatal health alert (NaN/inf loss) the weights in memory are broken: evaluation and the final save are
    skipped, the last checkpoint stays the latest good model, and summary.json says so under "stopping".
    `save` runs on every process and must itself write non-collective files from the main process only.
    `held_out_checks(out)` runs on the main process after the save (on the saved model) and adds to summary.json.
    """
    from align import plots, progress

    progress.install(trainer, stage)
    out = Path(output_dir)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics: dict[str, Any] = {"steps": trainer.state.global_step, "train_loss": result.training_loss}
    runtime = time.perf_counter() - started
    metrics["train_runtime_s"] = round(runtime, 2)
    tokens = trainer.state.num_input_tokens_seen
    if tokens and runtime > 0:
        metrics["tokens_per_s"] = round(tokens / runtime, 1)
    fatal = stage_controls.health.fatal if stage_controls is not None and stage_controls.stopped_on_fatal else None
    if fatal is None:
        if has_eval:
            metrics.update(trainer.evaluate())
        save(out)  # on every process: sharded (FSDP/ZeRO-3) weights are gathered collectively
    # Every process knows (the health callback runs on all of them), so a pipeline stops on all of them.
    notes = {"stopped": f"stopped on the fatal health alert {fatal.name} at step {fatal.step}"} if fatal else {}
    if trainer.is_world_process_zero():
        summary = {"stage": stage, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": metrics,
                   **extra_summary, **(stage_controls.summary(trainer.state) if stage_controls else {})}
        best = trainer.state.best_model_checkpoint
        if fatal is None and has_eval and held_out_checks is not None:
            summary.update(held_out_checks(out))
        if fatal is not None:
            summary["stopping"] = stopped_by(fatal, out)
            log.warning("%s stopped at step %d on %s; the final model was not saved, the last checkpoint (%s) "
                        "holds the latest good weights", stage, fatal.step, fatal.name,
                        summary["stopping"]["last_checkpoint"])
        elif stage_controls is not None:
            if stage_controls.early_stopping and best:
                (Path(best) / "BEST").write_text(
                    f"{trainer.args.metric_for_best_model} = {trainer.state.best_metric}\n")
            stage_controls.tracker.log_model(out)
        plots.plot_finished_run(out)
        (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return StageResult(stage=stage, output_dir=out, metrics=metrics, notes=notes)


def stopped_by(alert, output_dir: Path) -> dict[str, Any]:
    """summary.json's "stopping" entry after a fatal health alert: why, and which checkpoint holds good weights."""
    complete, _ = checkpoints(output_dir)
    return {"reason": f"fatal health alert {alert.name} at step {alert.step}: {alert.message}",
            "last_checkpoint": str(complete[-1]) if complete else None,
            "final_model": "not saved: the weights in memory are broken; rerun with train.resume=true (after fixing "
                           "the cause) to continue from the last checkpoint"}


@dataclass
class TrainerBuild:
    """What a TRL-trainer stage's `build()` returns to `run_trainer_stage`."""

    trainer: Any
    tokenizer: Any
    stage_data: Any
    controls: Controls
    summary: dict[str, Any] = field(default_factory=dict)
    """Stage-specific entries for summary.json (e.g. what the reference model is)."""
    held_out_checks: Callable[[Path], dict[str, Any]] | None = None
    """Checks of the saved model on the eval rows (baselines, probe), run after the final save; their summary.json
    entries."""


def run_trainer_stage(cfg: Any, stage: str, build: Callable[[Any, Any], TrainerBuild]) -> StageResult:
    """`run()` of a stage on a TRL trainer: output-dir rules, config.yaml, tracking, training, the final save (model
    or adapter, tokenizer, with `cfg.save_merged` a merged copy) and summary.json."""
    from align import config
    from align.tracking import Tracker

    out = Path(cfg.train.output_dir)
    resume_from = prepare_output_dir(cfg.train)
    is_main = is_main_process()
    if is_main:
        config.save_config(cfg, out)
    tracker = Tracker(cfg.tracking, out, stage=stage, run_config=config.to_dict(cfg), is_main=is_main)
    try:
        built = build(cfg, tracker)
        trainer = built.trainer

        def save(path: Path) -> None:
            trainer.save_model(str(path))
            if is_main:
                built.tokenizer.save_pretrained(path)
                if cfg.save_merged:
                    models.save_merged(trainer.model, built.tokenizer, path / "merged")

        trainable, total = models.count_parameters(trainer.model)
        result = train_and_save(
            trainer, stage=stage, output_dir=out, resume_from=resume_from,
            has_eval=trainer.eval_dataset is not None, save=save,
            extra_summary={"data": built.stage_data.report, "dropped": dict(built.stage_data.dropped),
                           "parameters": {"trainable": trainable, "total": total},
                           "lora": cfg.model.lora.enabled, **built.summary},
            stage_controls=built.controls, held_out_checks=built.held_out_checks,
        )
        tracker.summary(result.metrics)
    finally:
        notes = tracker.finish()
    result.notes.update(notes)
    return result
