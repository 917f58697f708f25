"""The life of a stage run, the same for every stage: the output dir's lock, its rules, config.yaml, a tracker,
training, then the plots and summary.json; the tracker is closed and the lock released whatever happens.

After a fatal health alert (NaN/inf loss) the weights in memory are broken: the stage skips its final save, the last
checkpoint stays the latest good model, and summary.json says so under "stopping".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align import config, rundir
from align.observe import plots
from align.observe.tracking import Tracker
from align.rundir import StageResult

if TYPE_CHECKING:
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

    def finish(self, metrics: dict[str, Any], *, fatal: Alert | None, at: str = "step",
               **sections: Any) -> StageResult:
        """End the run on every process, after the final save (skipped after a `fatal` alert): the plots and
        summary.json with `sections` (plus "stopping" after a fatal alert) on the main process, the tracker's
        summary, the result. `at` names what the alert's step counts (step, update)."""
        # Every process knows of a fatal alert (health rules see the same reduced metrics), so all of them stop.
        notes = {"stopped": f"stopped on the fatal health alert {fatal.name} at {at} {fatal.step}"} if fatal else {}
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
    """Holding the output dir's lock (`rundir.run_lock`): apply the output-dir rules, save config.yaml, open the
    tracker, `train` (which ends with `StageRun.finish`), and close the tracker even when training fails; its notes
    (where an offline W&B run lives) join the result's. The lock is released however the run ends."""
    out = Path(cfg.train.output_dir)
    with rundir.run_lock(out):
        resume_from = rundir.prepare_output_dir(cfg.train)
        is_main = rundir.is_main_process()
        if is_main:
            config.save_config(cfg, out)
        tracker = Tracker(cfg.tracking, out, stage=stage, run_config=config.to_dict(cfg), is_main=is_main)
        try:
            result = train(StageRun(stage, out, resume_from, is_main, tracker))
        finally:
            notes = tracker.finish()
    result.notes.update(notes)
    return result
