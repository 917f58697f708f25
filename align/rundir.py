"""The run-dir contract: the name of every file a stage (or `align pipeline`, `align eval`) writes into an output
dir, the resume/overwrite rules, and the one writer of `summary.json`.

A stage's output dir holds `checkpoint-N/` folders while training, then the final model, `config.yaml`,
`metrics.jsonl`, `plots/` and `summary.json`, which is written last and marks the stage as finished. While a run
writes it, `align.lock` names that run, so a second run on the same dir is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align.errors import AlignError, ConfigError

if TYPE_CHECKING:
    from accelerate import PartialState

    from align.observe.health import Alert
    from align.sections import TrainConfig

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
"""Written last by every stage: its metrics and what else the run recorded (data, health, stopping...)."""
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
"""Replies sampled while training (tracking.completions_every)."""
SAMPLES_FILE = "samples.jsonl"
"""PPO's rollouts in a stage dir; `align eval`'s sampled replies (one row per model and prompt) in an eval dir."""
PLOTS_DIR = "plots"
RUN_ID_FILE = "wandb_run_id"
"""The W&B run id, so that a resumed stage continues the same W&B run."""
MERGED_DIR = "merged"
"""A LoRA run's adapter merged into the base weights (save_merged)."""
VALUE_MODEL_DIR = "value_model"
"""PPO's value model, in the output dir and in each checkpoint."""
POLICY_DIR = "policy"
"""PPO's policy (or its LoRA adapter) in each checkpoint."""
CHECKPOINT_PREFIX = "checkpoint-"
INCOMPLETE_PREFIX = "incomplete-"
"""Before a checkpoint's name: one cut off mid-write, set aside when the run resumes (the newest copy per step)."""
TRAINER_STATE_FILE = "trainer_state.json"
"""Written last into a checkpoint (by the TRL trainer, or by PPO), so it marks the checkpoint as complete."""
BEST_FILE = "BEST"
"""In the best checkpoint of an early-stopped run: the metric and its value."""
LINEAGE = "lineage.json"
"""`align pipeline`: a stage's inputs, written when it starts."""
DONE = "DONE"
"""`align pipeline`: written last, after summary.json: the stage finished with the config hash it records."""
LOCK_FILE = "align.lock"
"""Held while a run writes the dir: its pid, host and start time (`run_lock`)."""
EVAL_FILE = "eval.json"
EVAL_MARKDOWN_FILE = "eval.md"

_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_SUMMARY_KEYS = ("steps", "train_loss", "eval_loss", "eval_accuracy", "eval_rewards/accuracies",
                 "eval_rewards/margins", "train_runtime_s", "tokens_per_s", "s_per_update", "objective/scores_first",
                 "objective/scores", "objective/kl")


@dataclass
class StageResult:
    stage: str
    output_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def summary_line(self) -> str:
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in self.metrics.items() if k in _SUMMARY_KEYS)
        return f"{self.stage} done: {shown} -> {self.output_dir}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def timestamp() -> str:
    """Local time to the second, as run-dir records write it (`finished_at`, `started_at`, `created`)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def distributed_state() -> PartialState:
    """accelerate's process state. Created with cpu=True when there is no GPU: otherwise processes started by
    `accelerate launch --multi_gpu` on a CPU-only machine would each think they are alone."""
    from accelerate import PartialState

    from align import models

    return PartialState(cpu=models.use_cpu())


def is_main_process() -> bool:
    """True on the process that writes files and logs (rank 0 under accelerate, or the only process)."""
    return distributed_state().is_main_process


@contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir`'s lock while the block runs, and release it however the block ends.

    Only the main process takes it; every process raises the same AlignError when another run holds it. A lock left
    by a process that is gone from this host (killed, crashed) is taken over with a warning.
    """
    state = distributed_state()
    mine, problem = None, None
    if state.is_main_process:
        try:
            mine = _take_lock(output_dir / LOCK_FILE)
        except AlignError as err:
            problem = str(err)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([problem])[0]
    if problem is not None:
        raise AlignError(problem)
    try:
        yield
    finally:
        if mine is not None:
            _release_lock(output_dir / LOCK_FILE, mine)


def _take_lock(path: Path) -> dict[str, Any]:
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": timestamp()}
    if path.parent.exists() and not path.parent.is_dir():
        raise AlignError(f"train.output_dir: {path.parent} is a file, not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if _create_lock(path, mine):
            return mine
        holder = _read_lock(path)
        if holder is None:
            raise AlignError(f"{path} exists but cannot be read. If no other run is using {path.parent}, delete it.")
        if not _lock_is_stale(holder):
            raise AlignError(f"{path.parent} is in use by another run (pid {holder.get('pid')} on "
                             f"{holder.get('host')}, started {holder.get('started_at')}). Wait for it to end or "
                             f"choose another output dir; if that process is gone, delete {path}.")
        log.warning("%s: taking over the lock of pid %s (started %s), which is no longer running", path.parent,
                    holder["pid"], holder.get("started_at"))
        path.unlink(missing_ok=True)
        if _create_lock(path, mine):
            return mine
        raise AlignError(f"{path.parent}: another run took over its stale lock at the same time; see {path}")
    except OSError as err:
        raise AlignError(f"train.output_dir: cannot write in {path.parent}: {err.strerror or err}") from err


def _create_lock(path: Path, record: dict[str, Any]) -> bool:
    """Create the lock holding `record`; False when it exists (O_EXCL: of two runs, one creates it)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _lock_is_stale(holder: dict[str, Any]) -> bool:
    """The lock's process is known to be gone: it ran on this host and no process has its pid. A process on
    another host cannot be checked, so its lock is never stale."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


def _release_lock(path: Path, mine: dict[str, Any]) -> None:
    """Remove the lock if it is still this run's (a user may have deleted it and another run taken it)."""
    if _read_lock(path) == mine:
        path.unlink(missing_ok=True)
    else:
        log.warning("%s is no longer this run's lock; left in place", path)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(path: Path) -> int:
    """The step (PPO: update) a `checkpoint-N` dir was written at."""
    return int(_CHECKPOINT.match(path.name).group(1))


def drop_logs_after(output_dir: Path, step: int, checkpoint_written: float | None = None) -> None:
    """Before a resumed run appends to them: drop the rows of metrics.jsonl, completions.jsonl and samples.jsonl
    logged after `step` (the checkpoint it resumes from), and a row cut off mid-write, so no step appears twice. Rows
    of `step` itself that carry a time later than `checkpoint_written` (the checkpoint's trainer_state.json mtime:
    the final evaluation of a run killed before summary.json) are dropped too. Main process only."""
    for name in (METRICS_FILE, COMPLETIONS_FILE, SAMPLES_FILE):
        path = output_dir / name
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _logged_before(line, step, checkpoint_written)]
        if len(kept) < len(lines):
            log.info("%s: dropping %d rows logged after step %d's checkpoint, which the resumed run logs again",
                     path, len(lines) - len(kept), step)
            tmp = path.with_name(f"{name}.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            tmp.replace(path)


def _logged_before(line: str, step: int, checkpoint_written: float | None) -> bool:
    try:
        row = json.loads(line)
    except ValueError:  # cut off by a kill mid-write
        return False
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or row["step"] > step:
        return False
    late = row["step"] == step and checkpoint_written is not None and isinstance(row.get("time"), (int, float))
    return not (late and row["time"] > checkpoint_written + 0.001)  # rows keep their time to the millisecond


def disk_full(output_dir: Path, err: BaseException, is_main: bool) -> str:
    """The one-line error for a full disk, after removing (main process) the partial write it left: a checkpoint
    without its trainer_state.json, or PPO's tmp-checkpoint-N. Complete checkpoints are kept."""
    where = getattr(err, "filename", None) or output_dir
    removed = []
    if is_main:
        _, incomplete = checkpoints(output_dir)
        for path in [*incomplete, *output_dir.glob(f"tmp-{CHECKPOINT_PREFIX}*")]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    complete, _ = checkpoints(output_dir)
    cleaned = f"removed the partial {', '.join(sorted(removed))}; " if removed else ""
    kept = (f"the last complete checkpoint {complete[-1]} is intact. Free space and rerun with train.resume=true"
            if complete else "no complete checkpoint was saved yet. Free space and run again")
    return f"no space left on device while writing {where}: {cleaned}{kept}"


def checkpoints(output_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) checkpoints, oldest first. TRAINER_STATE_FILE marks a checkpoint as complete."""
    found = []
    for path in output_dir.iterdir() if output_dir.is_dir() else []:
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    complete = [path for _, path in sorted(found) if (path / TRAINER_STATE_FILE).is_file()]
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
        _set_aside(out, incomplete, complete)
        if not train.resume and train.overwrite and (complete or finished):
            log.info("train.overwrite=true: removing the previous run's checkpoints and summary in %s", out)
            for path in complete:
                shutil.rmtree(path)
            for name in (SUMMARY, METRICS_FILE, COMPLETIONS_FILE, SAMPLES_FILE):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / PLOTS_DIR, ignore_errors=True)
    state.wait_for_everyone()
    if not train.resume:
        return None
    if complete:
        log.info("resuming from %s", complete[-1])
        return str(complete[-1])
    log.info("train.resume=true but %s holds no checkpoint; starting from the beginning", out)
    return None


def _set_aside(out: Path, incomplete: list[Path], complete: list[Path]) -> None:
    """Move checkpoints cut off mid-write out of the trainer's resume and rotation, keeping the newest copy of each
    for inspection, and remove the copies that a complete checkpoint has since passed."""
    last = int(_CHECKPOINT.match(complete[-1].name).group(1)) if complete else -1
    for old in sorted(out.glob(f"{INCOMPLETE_PREFIX}{CHECKPOINT_PREFIX}*")):
        match = _CHECKPOINT.match(old.name.removeprefix(INCOMPLETE_PREFIX))
        if old.is_dir() and match and int(match.group(1)) <= last:
            log.info("removing %s: the run has saved a complete checkpoint past it", old)
            shutil.rmtree(old)
    for path in incomplete:
        aside = path.with_name(f"{INCOMPLETE_PREFIX}{path.name}")
        if aside.exists():  # cut off at the same step before: the newest copy replaces it
            log.info("removing %s: %s was cut off at the same step again", aside, path.name)
            shutil.rmtree(aside)
        log.warning("%s is incomplete (no %s); moved to %s", path, TRAINER_STATE_FILE, aside.name)
        path.rename(aside)


def stopped_by(alert: Alert, output_dir: Path) -> dict[str, Any]:
    """summary.json's "stopping" entry after a fatal health alert: why, and which checkpoint holds good weights."""
    complete, _ = checkpoints(output_dir)
    return {"reason": f"fatal health alert {alert.name} at step {alert.step}: {alert.message}",
            "last_checkpoint": str(complete[-1]) if complete else None,
            "final_model": "not saved: the weights in memory are broken; rerun with train.resume=true (after fixing "
                           "the cause) to continue from the last checkpoint"}


def pipeline_stages(run_dir: Path) -> list[tuple[str, Path]]:
    """(stage, dir) of every finished stage under a pipeline run dir, in the order they finished.

    A stage dir holds summary.json (written last, with `finished_at`) and config.yaml (with `stage:`). Order is by
    `finished_at`, then by the summary file's modification time (finished_at has one-second resolution).
    """
    import yaml

    found = []
    for sub in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        summary, cfg = sub / SUMMARY, sub / CONFIG_FILE
        if not (summary.is_file() and cfg.is_file()):
            continue
        try:
            stage = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("stage")
        except (yaml.YAMLError, AttributeError) as e:
            raise ConfigError(f"{cfg}: not a stage's config.yaml: {e}") from e
        if not isinstance(stage, str):
            log.warning("%s: config.yaml names no stage; left out", sub)
            continue
        finished = json.loads(summary.read_text(encoding="utf-8")).get("finished_at", "")
        found.append((finished, summary.stat().st_mtime_ns, stage, sub))
    return [(stage, sub) for _, _, stage, sub in sorted(found)]


def write_summary(output_dir: Path, stage: str, metrics: dict[str, Any], **sections: Any) -> Path:
    """Write summary.json, the stage's last file: its name, when it finished, its metrics, then `sections` in the
    order given (data, dropped, parameters, health, stopping...). Main process only."""
    record = {"stage": stage, "finished_at": timestamp(), "metrics": metrics, **sections}
    path = output_dir / SUMMARY
    path.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return path
