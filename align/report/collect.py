"""Read a run dir into plain dataclasses: what each stage wrote, and the eval and probe results found beside it.

A stage dir holds config.yaml, metrics.jsonl, replies sampled while training (completions.jsonl; PPO's rollouts in
samples.jsonl), summary.json (written last, so absent while the stage runs) and, in a pipeline run, lineage.json and
DONE. `align eval` writes eval.json and samples.jsonl to its out dir (default <policy>/eval); a reward stage writes
probe.json into its own dir and `align probe` into its out dir (default <reward_model>/probe). So both are looked for
in a dir and in its direct sub-dirs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align.errors import ConfigError
from align.probe.results import PROBE_FILE
from align.rundir import COMPLETIONS_FILE, CONFIG_FILE, DONE, EVAL_FILE, LINEAGE, METRICS_FILE, SAMPLES_FILE, SUMMARY

log = logging.getLogger(__name__)

STAGE_MARKERS = (SUMMARY, METRICS_FILE, LINEAGE)
"""A dir holding any of these is a stage's output dir (finished or not)."""


@dataclass
class Sample:
    """One sampled reply."""

    prompt: str
    completion: str
    step: int | None = None
    """The training step it was sampled at (None for `align eval`'s replies)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What else its row records: length, eos, repeated_ngram, score, judge_score."""


@dataclass
class EvalRun:
    """What one `align eval` wrote."""

    dir: Path
    report: dict[str, Any]
    """eval.json."""
    samples: dict[str, list[Sample]]
    """Model name -> its replies, in the order of samples.jsonl."""
    charts: list[Path]
    """The PNG charts in the dir, a summary chart first."""


@dataclass
class Probe:
    path: Path
    result: dict[str, Any]
    """probe.json: reward_model, pairs, threshold, variants {name: n, win_rate, ci, mean_margin}, worst, passed."""


@dataclass
class Stage:
    """One stage's output dir."""

    name: str
    """The dir's name (in a pipeline run, the stage's name there)."""
    dir: Path
    summary: dict[str, Any] | None
    """summary.json; None while the stage runs or after it was interrupted."""
    config: dict[str, Any] | None
    config_text: str | None
    lineage: dict[str, Any] | None
    done: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    """metrics.jsonl's records (empty when there is none)."""
    samples: list[Sample]
    evals: list[EvalRun]
    probes: list[Probe]

    @property
    def kind(self) -> str:
        """sft, reward, dpo or ppo."""
        for record in (self.summary, self.config, self.lineage):
            if record and isinstance(record.get("stage"), str):
                return record["stage"]
        return self.name


@dataclass
class Run:
    dir: Path
    pipeline: bool
    """True for a pipeline run dir (stages in sub-dirs), False for one stage's output dir."""
    stages: list[Stage]
    """In the order they finished; unfinished ones last."""
    evals: list[EvalRun]
    """Eval results in the run dir itself or in a sub-dir that is not a stage's (a pipeline run's <run_dir>/eval)."""
    probes: list[Probe]


def collect(run_dir: str | Path) -> Run:
    """Everything the report shows, read from `run_dir` (a stage's output dir or a pipeline run dir)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"run_dir: {root} is not a directory")
    if is_stage_dir(root):
        return Run(dir=root, pipeline=False, stages=[read_stage(root)], evals=[], probes=[])
    stage_dirs = [sub for sub in sorted(root.iterdir()) if sub.is_dir() and is_stage_dir(sub)]
    run = Run(dir=root, pipeline=True, stages=sorted((read_stage(sub) for sub in stage_dirs), key=finishing_order),
              evals=[read_eval(path.parent) for path in found(root, EVAL_FILE, skip=stage_dirs)],
              probes=[read_probe(path) for path in found(root, PROBE_FILE, skip=stage_dirs)])
    if not (run.stages or run.evals or run.probes):
        raise ConfigError(f"run_dir: {root} holds no stage output ({', '.join(STAGE_MARKERS)}), no stage sub-dirs and "
                          f"no {EVAL_FILE} or {PROBE_FILE}; pass a stage's output dir or a pipeline run dir")
    return run


def is_stage_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in STAGE_MARKERS)


def finishing_order(stage: Stage) -> tuple:
    """Finished stages by `finished_at`, then by the summary file's modification time (finished_at has one-second
    resolution); unfinished ones after them, in pipeline order."""
    if stage.summary is not None:
        return 0, str(stage.summary.get("finished_at", "")), (stage.dir / SUMMARY).stat().st_mtime_ns
    return 1, (stage.lineage or {}).get("index", 0), stage.name


def found(root: Path, name: str, skip: Sequence[Path] = ()) -> list[Path]:
    """`root/name` and `root/*/name`, leaving out the sub-dirs in `skip`."""
    subs = [sub / name for sub in sorted(root.iterdir()) if sub.is_dir() and sub not in skip]
    return [path for path in [root / name, *subs] if path.is_file()]


def read_stage(path: Path) -> Stage:
    config_file = path / CONFIG_FILE
    config_text = config_file.read_text(encoding="utf-8") if config_file.is_file() else None
    samples = [as_sample(row) for name in (COMPLETIONS_FILE, SAMPLES_FILE) for row in read_jsonl(path / name)]
    return Stage(name=path.name, dir=path, summary=read_json(path / SUMMARY),
                 config=yaml.safe_load(config_text) if config_text else None, config_text=config_text,
                 lineage=read_json(path / LINEAGE), done=read_json(path / DONE),
                 metrics=read_jsonl(path / METRICS_FILE), samples=samples,
                 evals=[read_eval(found_at.parent) for found_at in found(path, EVAL_FILE)],
                 probes=[read_probe(found_at) for found_at in found(path, PROBE_FILE)])


def read_eval(path: Path) -> EvalRun:
    samples: dict[str, list[Sample]] = {}
    for row in read_jsonl(path / SAMPLES_FILE):
        samples.setdefault(str(row.get("model", "?")), []).append(as_sample(row))
    return EvalRun(dir=path, report=read_json(path / EVAL_FILE) or {}, samples=samples,
                   charts=sorted(path.glob("*.png"), key=lambda png: ("summary" not in png.stem, png.stem)))


def read_probe(path: Path) -> Probe:
    return Probe(path=path, result=read_json(path) or {})


def as_sample(row: dict[str, Any]) -> Sample:
    step = row.get("step")
    notes = {k: v for k, v in row.items() if k not in ("prompt", "completion", "step", "model")}
    return Sample(prompt=str(row.get("prompt", "")), completion=str(row.get("completion", "")),
                  step=step if isinstance(step, int) else None, notes=notes)


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        log.warning("%s: not valid JSON (%s); left out of the report", path, e)
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; lines that do not parse (a run killed mid-write) are skipped with a warning."""
    if not path.is_file():
        return []
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    if bad:
        log.warning("%s: skipped %d lines that are not valid JSON", path, bad)
    return rows
