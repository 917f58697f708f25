"""The life of a stage run, the same for every stage: the output dir's lock, its rules, config.yaml, a tracker,
training, then the plots and summary.json; the tracker is closed and the lock released whatever happens.

After a fatal health alert (NaN/inf loss) the weights in memory are broken: the stage skips its final save, the last
checkpoint stays the latest good model, and summary.json says so under "stopping".

Resuming (docs/resume.md): the keys in FIXED_ON_RESUME must equal the resumed run's config.yaml, or the run is refused
naming them; every other changed key applies from the checkpoint on, and the run says so. SIGTERM asks the stage to
save a checkpoint at the next step boundary and stop (`StageRun.stop_requested`, then `terminated`). A full disk ends
the run with an AlignError naming the path, after removing the partial checkpoint.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from align import config, rundir
from align.errors import AlignError, ConfigError, Terminated
from align.observe import plots
from align.observe.tracking import Tracker
from align.rundir import StageResult

if TYPE_CHECKING:
    import torch

    from align.observe.health import Alert

log = logging.getLogger(__name__)


@dataclass
class StageRun:
    """A stage run in progress: where it writes, what it resumes from, and its tracker."""

    stage: str
    output_dir: Path
    resume_from: str | None
    """The checkpoint to continue from (train.resume), if any."""
    is_main: bool
    """This process writes the run dir's files (rank 0, or the only process)."""
    tracker: Tracker
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """Resuming: the config keys whose value differs from the resumed run's config.yaml (old, new); they apply."""
    signalled: list[int] = field(default_factory=list)
    """SIGTERM received while the run trains (set by the handler `run_stage` installs)."""

    @property
    def resumed_step(self) -> int:
        """The step (update) of the checkpoint the run resumed from; 0 when it did not resume."""
        return rundir.checkpoint_step(Path(self.resume_from)) if self.resume_from else 0

    def schedule_changed(self) -> bool:
        """A key that shapes the learning-rate schedule changed on resume (see `apply_schedule`)."""
        return any(key in self.changes for key in SCHEDULE_KEYS)

    def stop_requested(self) -> bool:
        """SIGTERM reached this process, or any process of a multi-process launch (all must stop at the same step
        boundary, as their checkpoint save is collective). Call at every step boundary, on every process."""
        wanted = bool(self.signalled)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            import torch

            flag = torch.tensor([int(wanted)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            wanted = bool(flag.item())
        return wanted

    def terminated(self, step: int, at: str = "step") -> Terminated:
        """The error to raise once the checkpoint at `step` is saved after SIGTERM."""
        saved = rundir.checkpoint_dir(self.output_dir, step)
        return Terminated(f"stopped by SIGTERM after {at} {step}; {saved} holds it. To continue, rerun a stage "
                          "command with train.resume=true, an align pipeline command as it was")

    def finish(self, metrics: dict[str, Any], *, fatal: Alert | None, at: str = "step",
               **sections: Any) -> StageResult:
        """End the run on every process, after the final save (skipped after a `fatal` alert): the plots and
        summary.json with `sections` (plus "stopping" after a fatal alert) on the main process, the tracker's
        summary, the result. `at` names what the alert's step counts (step, update)."""
        # Every process knows of a fatal alert (health rules see the same reduced metrics), so all of them stop.
        notes = {"stopped": f"stopped on the fatal health alert {fatal.name} at {at} {fatal.step}"} if fatal else {}
        if self.resume_from:
            sections["resumed"] = {"from": self.resume_from, at: self.resumed_step,
                                   "changed": {key: list(values) for key, values in self.changes.items()}}
        if self.is_main:
            if fatal is not None:
                sections["stopping"] = rundir.stopped_by(fatal, self.output_dir)
                log.warning("%s stopped at %s %d on %s; the final model was not saved, the last checkpoint (%s) "
                            "holds the latest good weights", self.stage, at, fatal.step, fatal.name,
                            sections["stopping"]["last_checkpoint"])
            plots.plot_finished_run(self.output_dir)
            rundir.write_summary(self.output_dir, self.stage, metrics, **sections)
        self.tracker.summary(metrics)
        return StageResult(stage=self.stage, output_dir=self.output_dir, metrics=metrics, notes=notes)


def run_stage(cfg: Any, stage: str, train: Callable[[StageRun], StageResult]) -> StageResult:
    """Holding the output dir's lock (`rundir.run_lock`): apply the output-dir rules, check a resumed run's config
    against its config.yaml, save config.yaml, open the tracker, `train` (which ends with `StageRun.finish`) with
    SIGTERM turned into a stop request, and close the tracker even when training fails; its notes (where an offline
    W&B run lives) join the result's. The lock is released however the run ends. A full disk is an AlignError."""
    out = Path(cfg.train.output_dir)
    with rundir.run_lock(out):
        resume_from = rundir.prepare_output_dir(cfg.train)
        changes = resume_changes(out, cfg) if resume_from else {}
        is_main = rundir.is_main_process()
        if is_main:
            if cfg.train.resume:  # rows past the checkpoint are logged again by the resumed run
                checkpoint = Path(resume_from) if resume_from else None
                rundir.drop_logs_after(out, rundir.checkpoint_step(checkpoint) if checkpoint else 0,
                                       (checkpoint / rundir.TRAINER_STATE_FILE).stat().st_mtime if checkpoint else None)
            config.save_config(cfg, out)
        tracker = Tracker(cfg.tracking, out, stage=stage, run_config=config.to_dict(cfg), is_main=is_main)
        run = StageRun(stage, out, resume_from, is_main, tracker, changes)
        try:
            with _sigterm_stops(run):
                result = train(run)
        except (OSError, RuntimeError) as err:
            if not _disk_full(err):
                raise
            raise AlignError(rundir.disk_full(out, err, is_main)) from err
        finally:
            notes = tracker.finish()
    result.notes.update(notes)
    return result


FIXED_ON_RESUME = ("model.", "data.", "reference", "reward_model.", "value_model.", "train.batch_size",
                   "train.grad_accum", "train.seed", "train.max_length", "train.weight_decay",
                   "ppo.rollout_batch_size", "ppo.mini_batches", "ppo.kl_controller", "ppo.trl_parity", "rewards",
                   "num_generations")
"""Config keys (or key prefixes) a resumed run cannot change: they decide the weights and optimizer state the
checkpoint holds (model, LoRA, freezing, reference, reward and value models, GRPO/RLOO's rewards), the data order and
position it resumes at (data, batch sizes, seed, length filter, GRPO/RLOO's prompts per step), or state the optimizer
keeps per parameter group (weight decay)."""
NOT_COMPARED = ("train.output_dir", "train.resume", "train.overwrite", "tracking.", "model.gradient_checkpointing",
                "model.attn_implementation")
"""Run controls, tracking and how the model computes (not what): these may differ freely on resume, unreported."""
SCHEDULE_KEYS = ("train.learning_rate", "train.lr_scheduler", "train.warmup_ratio", "train.max_steps",
                 "train.epochs")


def resume_changes(out: Path, cfg: Any, log_changes: bool = True) -> dict[str, tuple[Any, Any]]:
    """The keys whose value differs from the resumed run's config.yaml, as (old, new); a ConfigError naming those of
    FIXED_ON_RESUME. The others apply from the checkpoint on (the optimizer's learning rate and schedule through
    `apply_schedule`), and are logged (`log_changes`). A key config.yaml lacks (written by an older align) is not
    compared."""
    path = out / rundir.CONFIG_FILE
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        old = None
    if not isinstance(old, dict):
        if log_changes:
            log.warning("%s: no readable config of the run being resumed; changed keys cannot be checked", path)
        return {}
    old_flat, new_flat = _flatten(old), _flatten(config.to_dict(cfg))
    changes = {key: (old_flat[key], value) for key, value in new_flat.items()
               if key in old_flat and old_flat[key] != value and not key.startswith(NOT_COMPARED)}
    fixed = [key for key in changes if key.startswith(FIXED_ON_RESUME)]
    if fixed:
        shown = "; ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in fixed)
        raise ConfigError(f"train.resume: {shown} differ from the run being resumed ({path}) and cannot change on "
                          "resume (the checkpoint's weights, optimizer state or data position depend on them). Set "
                          "them back, or start over with train.overwrite=true or in another output dir")
    for key, (before, now) in changes.items() if log_changes else ():
        log.warning("train.resume: %s changed from %r to %r; it applies from the checkpoint on", key, before, now)
    return changes


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys; a list of sections (GRPO's rewards) as its length under `key (entries)` and `key[i].sub` keys, so
    a key a newer align added to each entry is left out of the comparison like any other."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            flat[f"{prefix}{key} (entries)"] = len(value)
            for i, item in enumerate(value):
                flat.update(_flatten(item, f"{prefix}{key}[{i}]."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def apply_schedule(optimizer: torch.optim.Optimizer, scheduler: Any, learning_rate: float) -> None:
    """After a checkpoint's optimizer and scheduler state are loaded, put the configured learning rate and schedule
    in force. Loading restores the old ones: torch's `load_state_dict` brings back each parameter group's `lr` and
    `initial_lr` and the scheduler's `base_lrs`; the schedule's shape (scheduler type, warmup, total steps) is the
    new one, but the next step would still run at the old rate. Groups keep their ratios to the peak rate."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps torch's
    groups = optimizer.param_groups
    old = [group.get("initial_lr", group["lr"]) for group in groups]
    ratio = learning_rate / max(old) if max(old) > 0 else 1.0
    bases = [value * ratio for value in old]
    lambdas = getattr(scheduler, "lr_lambdas", None)
    for i, (group, base) in enumerate(zip(groups, bases, strict=True)):
        group["initial_lr"] = base
        group["lr"] = base * lambdas[i](scheduler.last_epoch) if lambdas else group["lr"] * ratio
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = bases
    scheduler._last_lr = [group["lr"] for group in groups]
    log.info("learning rate from step %d: %s", getattr(scheduler, "last_epoch", 0), scheduler._last_lr)


@contextmanager
def _sigterm_stops(run: StageRun) -> Iterator[None]:
    """While the block runs, SIGTERM (what schedulers and `docker stop` send) is recorded on `run` instead of ending
    the process; the stage saves a checkpoint at its next step boundary and raises `run.terminated`. A second
    SIGTERM ends the process at once. Signal handlers can only be set from the main thread; elsewhere SIGTERM keeps
    its default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if run.signalled:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
        run.signalled.append(signum)
        log.warning("SIGTERM: saving a checkpoint at the next step boundary, then stopping (send it again to stop "
                    "at once, without one)")

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _disk_full(err: BaseException) -> bool:
    """The error (or one it came from) says the disk is full: ENOSPC/EDQUOT, or torch's zip writer's short write
    ("unexpected pos ..."), which is how a full disk shows in `torch.save`."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "file write failed" in str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False
