"""`align sweep`: run a stage or pipeline config over a grid or a seeded random search of overrides.

Trials run one after another in this process, each in `<run_dir>/<trial name>/` with its resolved config. A trial
is finished once `trial.json` (written last) exists, so re-running a sweep skips finished trials and resumes an
interrupted one from its last checkpoint. Results are ranked by the chosen eval metric into `results.csv`,
`results.md` and `results.png`. To use several GPUs, start one process per GPU with `--shard i/n` (each runs every
n-th trial) and `CUDA_VISIBLE_DEVICES` set accordingly.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from align import config, rundir
from align.errors import ConfigError

log = logging.getLogger(__name__)

TRIAL_DONE = "trial.json"


@dataclass
class SearchRange:
    min: float
    max: float
    log: bool = False
    """Sample uniformly in log space (learning rates, beta)."""
    integer: bool = False

    def check(self) -> list[str]:
        problems = [] if self.min < self.max else [f"min: must be < max, got {self.min} >= {self.max}"]
        if self.log and self.min <= 0:
            problems.append("log: a log-scale range needs min > 0")
        return problems


@dataclass
class Parameter:
    values: list[Any] = field(default_factory=list)
    """Values to try (grid and random search)."""
    range: SearchRange | None = None
    """A range to sample from (random search only)."""

    @classmethod
    def from_shorthand(cls, value: Any) -> dict[str, Any]:
        return {"values": value} if isinstance(value, list) else value

    def check(self) -> list[str]:
        if bool(self.values) == (self.range is not None):
            return ["set exactly one of values or range"]
        return []


@dataclass(kw_only=True)
class SweepConfig:
    stage: Literal["sweep"] = "sweep"
    base: str
    """The stage or pipeline YAML every trial starts from."""
    run_dir: str
    """Each trial writes <run_dir>/<trial>/; results.{csv,md,png} go here."""
    parameters: dict[str, Parameter]
    """Dotted config keys to vary, each a list of values (shorthand) or {values: [...]} / {range: {min, max}}."""
    method: Literal["grid", "random"] = "grid"
    num_trials: int = 0
    """Random search: how many trials to sample."""
    seed: int = 0
    metric: str = "eval_loss"
    """Summary metric that ranks the trials (a pipeline trial is ranked by its last stage)."""
    mode: Literal["min", "max"] = "min"
    overrides: list[str] = field(default_factory=list)
    """Overrides applied to every trial, before the swept ones."""

    def check(self) -> list[str]:
        problems = []
        if not self.parameters:
            problems.append("parameters: name at least one key to sweep")
        if self.method == "random" and self.num_trials <= 0:
            problems.append("num_trials: random search needs num_trials > 0")
        if self.method == "grid":
            problems += [f"parameters.{k}: grid search takes values, not a range"
                         for k, p in self.parameters.items() if p.range is not None]
        if not Path(self.base).is_file():
            problems.append(f"base: config file not found: {self.base}")
        return problems


@dataclass
class Trial:
    index: int
    params: dict[str, Any]

    @property
    def name(self) -> str:
        slug = "-".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in self.params.items())
        return f"trial-{self.index:03d}-" + re.sub(r"[^A-Za-z0-9=.+-]", "_", slug)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trials(cfg: SweepConfig) -> list[Trial]:
    keys = list(cfg.parameters)
    if cfg.method == "grid":
        combos = itertools.product(*(cfg.parameters[k].values for k in keys))
        return [Trial(i, dict(zip(keys, combo))) for i, combo in enumerate(combos)]
    rng = random.Random(cfg.seed)
    return [Trial(i, {k: _sample(cfg.parameters[k], rng) for k in keys}) for i in range(cfg.num_trials)]


def _sample(param: Parameter, rng: random.Random) -> Any:
    if param.values:
        return rng.choice(param.values)
    r = param.range
    value = math.exp(rng.uniform(math.log(r.min), math.log(r.max))) if r.log else rng.uniform(r.min, r.max)
    return round(value) if r.integer else float(f"{value:.4g}")


def _base_kind(path: str) -> str:
    return str(config.read_yaml(path).get("stage", ""))


def trial_overrides(cfg: SweepConfig, trial: Trial, trial_dir: Path, kind: str) -> list[str]:
    where = f"run_dir={trial_dir}" if kind == "pipeline" else f"train.output_dir={trial_dir}"
    sweep_name = Path(cfg.run_dir).name
    swept = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
             for k, v in trial.params.items()]
    tracking = [f"tracking.group={sweep_name}", f"tracking.name={trial.name}"]
    return [*cfg.overrides, *swept, where, *tracking]


def _load_trial(kind: str, base: str, overrides: list[str]):
    if kind == "pipeline":
        from align import pipeline

        return pipeline.load(base, overrides)
    from align import stages

    return stages.load(kind, base, overrides)


def _run_trial(kind: str, trial_cfg) -> dict[str, Any]:
    if kind == "pipeline":
        from align import pipeline

        results = pipeline.run(trial_cfg)
        return results[-1].metrics if results else {}
    from align import stages

    return stages.run(kind, trial_cfg).metrics


def load_trials(cfg: SweepConfig) -> tuple[str, list[Trial], dict[int, Any]]:
    """The base's kind, the trials and every trial's loaded config: loading checks them all (what `align validate`
    does too), so a bad value or an unknown swept key fails before any trial trains."""
    kind = _base_kind(cfg.base)
    if not kind or kind == "sweep":
        raise ConfigError(f"base: {cfg.base} must be a stage or pipeline config (with a `stage:` key)")
    run_dir = Path(cfg.run_dir)
    all_trials = trials(cfg)
    loaded = {t.index: _load_trial(kind, cfg.base, trial_overrides(cfg, t, run_dir / t.name, kind)) for t in all_trials}
    return kind, all_trials, loaded


def run(cfg: SweepConfig, shard: tuple[int, int] = (0, 1)) -> list[dict[str, Any]]:
    """Run the trials of this shard that are not finished yet; return every finished trial's result, ranked."""
    kind, all_trials, loaded = load_trials(cfg)
    run_dir = Path(cfg.run_dir)
    config.save_config(cfg, run_dir)
    index, count = shard
    for trial in all_trials:
        trial_dir = run_dir / trial.name
        if trial.index % count != index:
            continue
        if (trial_dir / TRIAL_DONE).is_file():
            log.info("%s: finished earlier, skipped", trial.name)
            continue
        log.info("%s: %s", trial.name, trial.params)
        trial_cfg = loaded[trial.index]
        if kind != "pipeline" and rundir.checkpoints(trial_dir)[0]:  # a pipeline resumes its stages itself
            log.info("%s: interrupted earlier, resuming from its last checkpoint", trial.name)
            trial_cfg = dataclasses.replace(trial_cfg, train=dataclasses.replace(trial_cfg.train, resume=True,
                                                                                overwrite=False))
        metrics = _run_trial(kind, trial_cfg)
        record = {"trial": trial.name, "params": trial.params, "metrics": metrics, "metric": metrics.get(cfg.metric)}
        (trial_dir / TRIAL_DONE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return write_results(cfg, all_trials)


def write_results(cfg: SweepConfig, all_trials: list[Trial]) -> list[dict[str, Any]]:
    run_dir = Path(cfg.run_dir)
    done = [json.loads((run_dir / t.name / TRIAL_DONE).read_text())
            for t in all_trials if (run_dir / t.name / TRIAL_DONE).is_file()]
    ranked = sorted(done, key=lambda r: _rank_key(r["metric"], cfg.mode))
    keys = list(cfg.parameters)
    with (run_dir / "results.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "trial", *keys, cfg.metric])
        for rank, r in enumerate(ranked, 1):
            writer.writerow([rank, r["trial"], *(r["params"][k] for k in keys), r["metric"]])
    lines = [f"| rank | trial | {' | '.join(keys)} | {cfg.metric} |", "|" + "---|" * (len(keys) + 3)]
    lines += [f"| {rank} | {r['trial']} | {' | '.join(str(r['params'][k]) for k in keys)} | {r['metric']} |"
              for rank, r in enumerate(ranked, 1)]
    (run_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(ranked, cfg.metric, run_dir / "results.png")
    return ranked


def _rank_key(value: Any, mode: str) -> tuple[int, float]:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return (1, 0.0)  # trials without the metric go last
    return (0, value if mode == "min" else -value)


def _plot(ranked: list[dict[str, Any]], metric: str, path: Path) -> None:
    from align.observe import plots

    plt = plots.pyplot()
    shown = [r for r in ranked if isinstance(r["metric"], (int, float))]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(shown) + 2), 3.5))
    ax.barh([r["trial"] for r in shown][::-1], [r["metric"] for r in shown][::-1])
    ax.set_xlabel(metric)
    ax.set_title("sweep trials, best at the top")
    plots.save(plt, fig, path)
