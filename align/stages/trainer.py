"""What the stages on a TRL trainer (sft, reward, dpo) share: their TrainingArguments, the `trainer_overrides` check,
their callbacks, and `run()`: train, evaluate, save the final model, then the plots and summary.json."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align import models, rundir
from align.errors import ConfigError
from align.rundir import StageResult
from align.sections import ModelConfig, TrainConfig
from align.stages import lifecycle

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainerState

    from align.data import StageData
    from align.observe.health import Alert, HealthReporter
    from align.observe.tracking import Tracker
    from align.stages.freezing import FreezePlan

log = logging.getLogger(__name__)


def check_trainer_overrides(overrides: dict[str, Any], trl_config: str, owned: dict[str, str]) -> list[str]:
    """Problems with `trainer_overrides`: not a field of `trl.<trl_config>` (a dotted name reaches into a submodule,
    e.g. experimental.orpo.ORPOConfig), or a knob the stage sets (`owned`)."""
    if not overrides:
        return []
    import importlib

    module, _, name = f"trl.{trl_config}".rpartition(".")
    valid = [f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))]
    problems = []
    for key in overrides:
        if key in owned:
            problems.append(f"trainer_overrides.{key}: set by align; use {owned[key]} instead")
        elif key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"trainer_overrides.{key}: not a field of trl.{trl_config}.{hint}")
    return problems


def trl_arguments(config_class, overrides: dict[str, Any], **arguments):
    """`config_class(**arguments, **overrides)`. TrainingArguments checks values only when built; what it rejects
    once `trainer_overrides` are given is a ConfigError naming them, not a traceback."""
    try:
        return config_class(**arguments, **overrides)
    except (ValueError, TypeError) as e:
        if not overrides:
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"trainer_overrides: trl.{config_class.__name__} rejects {overrides}: {reason}") from e


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
        # Not a mistake: transformers >= 5 reads a warmup_steps float below 1 as a fraction of the total steps
        # (its warmup_ratio argument is deprecated).
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
class TrainerCallbacks:
    """The callbacks a TRL stage's trainer runs (tracking, health alerts, freezing schedule, early stopping, sampled
    completions), and the ones whose outcome goes to summary.json."""

    callbacks: list[TrainerCallback]
    tracker: Tracker
    """Receives every trainer log, and the final model."""
    health: HealthReporter | None = None
    """The health callback: its alerts go to summary.json; a fatal one skips the final save."""
    freeze: FreezePlan | None = None
    early_stopping: bool = False

    @property
    def fatal(self) -> Alert | None:
        """The fatal health alert that stopped training, if any."""
        return self.health.fatal if self.health is not None else None

    def summary(self, state: TrainerState) -> dict[str, Any]:
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


def trainer_callbacks(cfg: Any, model: PreTrainedModel, tracker: Tracker, *,
                      tokenizer: PreTrainedTokenizerBase | None = None,
                      stage_data: StageData | None = None) -> TrainerCallbacks:
    """The callbacks a stage's trainer needs: tracking and health alerts, then freezing, early stopping and sampled
    completions when configured. Completions need `tokenizer` and `stage_data` (SFT and DPO pass them)."""
    from align.observe import health, samples
    from align.stages import freezing

    found = TrainerCallbacks(callbacks=[tracker.callback()], tracker=tracker)
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
        found.callbacks.append(samples.completions_callback(
            samples.completion_prompts(stage_data, cfg.tracking.completions_prompts), every, tokenizer=tokenizer,
            tracker=tracker, max_new_tokens=cfg.tracking.completions_max_new_tokens, seed=cfg.train.seed,
            health=found.health))
    return found


@dataclass
class TrainerBuild:
    """What a TRL-trainer stage's `build()` returns to `run_trainer_stage`."""

    trainer: Trainer
    tokenizer: PreTrainedTokenizerBase
    stage_data: StageData
    callbacks: TrainerCallbacks
    summary: dict[str, Any] = field(default_factory=dict)
    """Stage-specific entries for summary.json (e.g. what the reference model is)."""
    held_out_checks: Callable[[Path], dict[str, Any]] | None = None
    """Checks of the saved model on the eval rows (baselines, probe), run after the final save; their summary.json
    entries."""


def train_and_save(trainer: Trainer, run: lifecycle.StageRun, *, has_eval: bool, save: Callable[[Path], None],
                   summary: dict[str, Any], callbacks: TrainerCallbacks,
                   held_out_checks: Callable[[Path], dict[str, Any]] | None = None) -> StageResult:
    """Train (resuming if asked), evaluate, save the final model with `save`, then finish the run (plots,
    summary.json with `summary` and the callbacks' entries).

    A fatal health alert skips evaluation and the final save. `save` runs on every process and must itself write
    non-collective files from the main process only. `held_out_checks(out)` runs on the main process after the save
    (on the saved model) and adds to summary.json.
    """
    from align.observe import progress

    bar = progress.install(trainer, run.stage)
    out = run.output_dir
    # First, so that no other callback starts work for a run that is over.
    resumed = _ResumeAndStop(run)
    trainer.callback_handler.callbacks.insert(0, resumed.callback())
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=run.resume_from)
    except _AlreadyTrained:
        metrics: dict[str, Any] = _end_without_training(trainer, run.resume_from)
    else:
        if resumed.stopping and callbacks.fatal is None:
            raise run.terminated(trainer.state.global_step)
        metrics = {"steps": trainer.state.global_step,
                   "train_loss": loss_over_all_steps(trainer.state.log_history, resumed.start_step,
                                                     trainer.state.global_step, result.training_loss)}
        runtime = time.perf_counter() - started
        metrics["train_runtime_s"] = round(runtime, 2)
        tokens = trainer.state.num_input_tokens_seen - resumed.start_tokens  # this run's, not the checkpoint's
        if tokens and runtime > 0:
            metrics["tokens_per_s"] = round(tokens / runtime, 1)
    finally:
        bar.close()
    fatal = callbacks.fatal
    if fatal is None:
        if has_eval:
            metrics.update(trainer.evaluate())
        save(out)  # on every process: sharded (FSDP/ZeRO-3) weights are gathered collectively
    sections = {**summary, **callbacks.summary(trainer.state)}
    if run.is_main and fatal is None:
        if has_eval and held_out_checks is not None:
            sections.update(held_out_checks(out))
        best = trainer.state.best_model_checkpoint
        if callbacks.early_stopping and best:
            (Path(best) / rundir.BEST_FILE).write_text(
                f"{trainer.args.metric_for_best_model} = {trainer.state.best_metric}\n")
        callbacks.tracker.log_model(out)
    return run.finish(metrics, fatal=fatal, **sections)


class _AlreadyTrained(Exception):
    """The checkpoint resumed from already holds the run's last step."""


def loss_over_all_steps(log_history: list[dict[str, Any]], start: int, end: int, resumed_loss: float) -> float:
    """The mean training loss per step over the whole run, as a run without interruption reports it. `Trainer.train`
    returns the mean over the steps of this call only (`resumed_loss`, steps start+1..end); the steps before come
    from the logged losses the checkpoint's log history holds (each the mean over its logging interval). Steps
    between the last log and the checkpoint (logging_steps not dividing save_steps) have no record and are left out."""
    logged, last = 0.0, 0
    for record in log_history:
        if "loss" in record and last < record["step"] <= start:
            logged += record["loss"] * (record["step"] - last)
            last = record["step"]
    steps = last + end - start
    return (logged + resumed_loss * (end - start)) / steps if steps else resumed_loss


class _ResumeAndStop:
    """The first callback of a TRL stage's trainer. At the start of `Trainer.train`: stops before the first step
    when the checkpoint resumed from is at or past max_steps (the Trainer checks max_steps only after a step: resumed
    inside an epoch it would run step max_steps + 1 and overwrite the final model); records where the run resumed;
    puts a learning rate or schedule changed on resume in force (`lifecycle.apply_schedule`). At each step end: after
    SIGTERM, has the Trainer save a checkpoint at this step and stop."""

    def __init__(self, run: lifecycle.StageRun):
        self.run = run
        self.start_step = 0
        self.start_tokens = 0
        self.stopping = False

    def callback(self) -> TrainerCallback:
        from transformers import TrainerCallback

        owner = self

        class ResumeAndStop(TrainerCallback):
            def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
                if state.global_step >= state.max_steps > 0:
                    raise _AlreadyTrained
                owner.start_step, owner.start_tokens = state.global_step, state.num_input_tokens_seen
                if state.global_step and owner.run.schedule_changed():
                    lifecycle.apply_schedule(optimizer, lr_scheduler, args.learning_rate)

            def on_step_end(self, args, state, control, **kwargs):
                if owner.run.stop_requested():
                    owner.stopping = True
                    control.should_save = True
                    control.should_training_stop = True

        return ResumeAndStop()


def _end_without_training(trainer: Trainer, checkpoint: str | None) -> dict[str, Any]:
    """Finish a run resumed from a checkpoint that holds its last step: the Trainer has loaded that checkpoint's
    weights and state; do what the end of `Trainer.train` does to them (early stopping's best weights, the callbacks'
    on_train_end). Returns the metrics: the steps (no loss or speed, as nothing was trained)."""
    state = trainer.state
    log.warning("%s already holds step %d of max_steps %d: not training again; finishing from it", checkpoint,
                state.global_step, state.max_steps)
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint is not None:
        trainer._load_best_model()
    trainer.control = trainer.callback_handler.on_train_end(trainer.args, state, trainer.control)
    trainer.is_in_train = False
    return {"steps": state.global_step}


def run_trainer_stage(cfg: Any, stage: str, build: Callable[[Any, Tracker], TrainerBuild]) -> StageResult:
    """`run()` of a stage on a TRL trainer: the stage lifecycle around building the trainer, training, the final
    save (model or adapter, tokenizer, with `cfg.save_merged` a merged copy) and summary.json."""

    def train(run: lifecycle.StageRun) -> StageResult:
        built = build(cfg, run.tracker)
        trainer = built.trainer

        def save(path: Path) -> None:
            trainer.save_model(str(path))
            if run.is_main:
                built.tokenizer.save_pretrained(path)
                if cfg.save_merged:
                    models.save_merged(trainer.model, built.tokenizer, path / rundir.MERGED_DIR)

        trainable, total = models.count_parameters(trainer.model)
        return train_and_save(
            trainer, run, has_eval=trainer.eval_dataset is not None, save=save,
            summary={"data": built.stage_data.report, "dropped": dict(built.stage_data.dropped),
                     "parameters": {"trainable": trainable, "total": total},
                     "lora": cfg.model.lora.enabled, **built.summary},
            callbacks=built.callbacks, held_out_checks=built.held_out_checks)

    return lifecycle.run_stage(cfg, stage, train)
