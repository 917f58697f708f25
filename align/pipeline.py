"""`align pipeline`: run stages in order in one run dir, each stage's output becoming the next one's input.

Stage `<name>` writes `<run_dir>/<name>/`: its own outputs, `lineage.json` (input models, data fingerprint, config
hash, tokenizer fingerprint; written when it starts) and `DONE` (written last). Wiring, unless the pipeline YAML sets
the key for that stage (its inline `config:` or `overrides:`; a `file:` is a template whose inputs are filled in):
- model.name_or_path: the latest policy (the output of the last policy stage: sft, dpo, kto, orpo, simpo, ppo, grpo or
  rloo; at first the pipeline's model.name_or_path). A reward stage starts from it too. DPO, KTO, PPO, GRPO and RLOO
  take their frozen reference from it (ORPO and SimPO have none).
- ppo reward_model.name_or_path, grpo / rloo rewards: the last reward stage's output (PPO's value model defaults to
  the reward model); also for a reward section that names neither a model nor a function (`rewards: [{probe_threshold:
  1.0}]`: the last reward stage's model, with that probe setting).
- train.output_dir is always `<run_dir>/<name>`; W&B runs share one group (default: the run dir's name), one
  job_type per stage, named `<tracking.name or run dir name>-<stage>`. Each stage's run uses its input data files and
  models as W&B artifacts and logs its output model as one (see align.observe.tracking), so W&B shows the run's lineage.
Section defaults: the pipeline's `model:` under every stage's, its non-default `tracking:` keys over every stage's.
Re-running skips stages with DONE and an unchanged config; an interrupted stage resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from align import config, registry, rundir, stages
from align.errors import AlignError, ConfigError
from align.rundir import DONE, LINEAGE, StageResult
from align.sections import DataConfig, ModelConfig, TrackingConfig
from data_formats.readers import FILE_TYPES

if TYPE_CHECKING:
    from align.stages.dpo import DPOConfig
    from align.stages.grpo import GRPOConfig
    from align.stages.ppo import PPOConfig
    from align.stages.reward import RewardConfig
    from align.stages.rloo import RLOOConfig
    from align.stages.sft import SFTConfig

    StageConfig = SFTConfig | RewardConfig | DPOConfig | PPOConfig | GRPOConfig | RLOOConfig

log = logging.getLogger(__name__)

POLICY_STAGES = ("sft", "dpo", "kto", "orpo", "simpo", "ppo", "grpo", "rloo")
GROUP_RL_STAGES = ("grpo", "rloo")
"""Stages whose `rewards` the pipeline sets to the last reward stage's output (as PPO's reward_model)."""


@dataclass
class StageEntry:
    name: str
    """The stage (a name in align.stages.STAGES: sft, reward, dpo, kto, orpo, simpo, ppo, ...). Its outputs go to
    <run_dir>/<name>/."""
    config: dict[str, Any] | None = None
    """The stage's config inline (without train.output_dir; `stage:` may be left out)."""
    file: str | None = None
    """A stage YAML to use instead (relative to the working dir, like data paths)."""
    overrides: list[str] = field(default_factory=list)
    """KEY=VALUE overrides for this stage, applied last."""

    def check(self) -> list[str]:
        problems = []
        if self.name not in stages.STAGES:
            close = difflib.get_close_matches(self.name, list(stages.STAGES), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Stages: {', '.join(stages.STAGES)}."
            problems.append(f"name: unknown stage {self.name!r}.{hint}")
        if (self.config is None) == (self.file is None):
            problems.append("config: set exactly one of config (inline) and file")
        if self.file is not None and not Path(self.file).is_file():
            problems.append(f"file: stage config not found: {self.file}")
        return problems


@dataclass(kw_only=True)
class PipelineConfig:
    stage: Literal["pipeline"] = "pipeline"
    run_dir: str
    """Each stage writes <run_dir>/<name>/."""
    model: ModelConfig
    """Defaults for every stage's model section; name_or_path is the first stage's input."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stages: list[StageEntry]

    def check(self) -> list[str]:
        names = [entry.name for entry in self.stages]
        problems = [] if names else ["stages: list at least one stage"]
        problems += [f"stages: {name!r} appears twice; each stage writes <run_dir>/<name>/"
                     for name in sorted({n for n in names if names.count(n) > 1})]
        return problems


@dataclass
class Plan:
    """One stage, resolved: its typed config and where its inputs come from."""

    index: int
    name: str
    cfg: StageConfig
    inputs: dict[str, str]
    """Role (model, reference, reward_model, value_model) -> name_or_path."""
    config_hash: str

    @property
    def label(self) -> str:
        return f"stages[{self.index}] ({self.name})"

    @property
    def out(self) -> Path:
        return Path(self.cfg.train.output_dir)


def load(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline YAML and every stage config in it. `<stage>.key=value` overrides go to that stage."""
    raw = config.read_yaml(path)
    names = {entry.get("name") for entry in raw.get("stages") or [] if isinstance(entry, dict)}
    own = [o for o in overrides or [] if o.split(".", 1)[0] not in names]
    cfg = config.load_config(PipelineConfig, path, own)
    for entry in cfg.stages:
        entry.overrides += [o.split(".", 1)[1] for o in overrides or [] if o.split(".", 1)[0] == entry.name]
    resolve(cfg)
    return cfg


def resolve(cfg: PipelineConfig) -> list[Plan]:
    """Every stage's config with the wiring applied; every stage that does not load is named with its key."""
    run_dir = Path(cfg.run_dir)
    inputs = {"policy": cfg.model.name_or_path, "reward": None}
    plans, problems = [], []
    for index, entry in enumerate(cfg.stages):
        try:
            plans.append(_resolve_stage(cfg, index, entry, inputs))
        except ConfigError as e:
            source = f" from {entry.file}" if entry.file else ""
            problems.append(f"stages[{index}] ({entry.name}){source}: {e}")
        if entry.name in POLICY_STAGES:
            inputs["policy"] = str(run_dir / entry.name)
        elif entry.name == "reward":
            inputs["reward"] = str(run_dir / entry.name)
    if problems:
        raise ConfigError("; ".join(problems))
    return plans


def _resolve_stage(cfg: PipelineConfig, index: int, entry: StageEntry, inputs: dict[str, str | None]) -> Plan:
    run_dir = Path(cfg.run_dir)
    raw = dict(entry.config) if entry.config is not None else config.read_yaml(entry.file)
    declared = raw.pop("stage", entry.name)
    if declared != entry.name:
        raise ConfigError(f"this is a {declared!r} config; name the stage {declared!r} or use another")
    explicit = config.deep_merge(raw if entry.config is not None else {}, config.parse_overrides(entry.overrides))
    if config.get_dotted(explicit, "train.output_dir") is not None:
        raise ConfigError(f"train.output_dir: the pipeline writes this stage to {run_dir / entry.name}; remove the "
                          "key (or change run_dir)")
    for key in ("train.resume", "train.overwrite"):
        if config.get_dotted(explicit, key) is not None:
            raise ConfigError(f"{key}: the pipeline decides it (an interrupted stage resumes; --from and --force "
                              "start stages over); remove the key")
    layered = config.deep_merge({"model": config.to_dict(cfg.model)}, raw)
    tracking = {**_shared_tracking(cfg), "name": f"{cfg.tracking.name or run_dir.name}-{entry.name}"}
    layered = config.deep_merge(layered, {"train": {"output_dir": str(run_dir / entry.name)}, "tracking": tracking})
    wiring = {"model.name_or_path": inputs["policy"]}
    reward = inputs["reward"]
    if entry.name == "ppo" and reward is not None and not _names_reward(config.get_dotted(explicit, "reward_model")):
        wiring["reward_model.name_or_path"] = reward
    if entry.name in GROUP_RL_STAGES and reward is not None:
        given = config.get_dotted(explicit, "rewards")
        if given is None:
            wiring["rewards"] = [{"name_or_path": reward}]
        elif isinstance(given, list):
            layered = {**layered, "rewards": [spec if _names_reward(spec) else {**spec, "name_or_path": reward}
                                              for spec in given]}
    for key, value in wiring.items():
        if config.get_dotted(explicit, key) is None:
            layered = config.deep_merge(layered, config.set_dotted({}, key, value))
    stage_cfg = stages.load(entry.name, None, entry.overrides, base=layered)
    return Plan(index, entry.name, stage_cfg, _inputs(stage_cfg), _config_hash(stage_cfg))


def _names_reward(section: Any) -> bool:
    """Whether a reward section names its reward (a model or a function); one that only sets probe keys or a weight
    is wired to the last reward stage's output."""
    if not isinstance(section, dict):
        return section is not None  # a value that is not a section is left to the config loader to refuse
    return section.get("name_or_path") is not None or section.get("function") is not None


def run(cfg: PipelineConfig, from_stage: str | None = None, force: bool = False) -> list[StageResult]:
    """Run the stages that are not finished (all from `from_stage` on, or all with `force`); results of all."""
    plans = resolve(cfg)
    names = [plan.name for plan in plans]
    if from_stage is not None and from_stage not in names:
        raise ConfigError(f"--from: no stage named {from_stage!r} in this pipeline; stages: {', '.join(names)}")
    _check_inputs(plans, Path(cfg.run_dir))
    _check_tokenizers(plans)
    actions = _actions(plans, names.index(from_stage) if from_stage else None, force)
    produced = {str(plan.out): plan for plan in plans}
    results = []
    for plan in plans:
        action = actions[plan.name]
        if action == "skip":
            log.info("%s: finished earlier with the same config, skipped (%s)", plan.label, plan.out)
            metrics = (_read_json(plan.out / rundir.SUMMARY) or {}).get("metrics", {})
            results.append(StageResult(plan.name, plan.out, metrics, {"skipped": "finished earlier"}))
            continue
        train = dataclasses.replace(plan.cfg.train, resume=action == "resume", overwrite=action == "rerun")
        stage_cfg = dataclasses.replace(plan.cfg, train=train)
        verb = {"run": "starting", "resume": "resuming", "rerun": "starting over"}[action]
        log.info("%s: %s in %s", plan.label, verb, plan.out)
        if rundir.is_main_process():
            plan.out.mkdir(parents=True, exist_ok=True)
            (plan.out / DONE).unlink(missing_ok=True)
            _write_json(plan.out / LINEAGE, _lineage_record(plan, produced, _tokenizer_fingerprint(plan.cfg.model)))
        results.append(stages.run(plan.name, stage_cfg))
        gc.collect()  # trainers hold reference cycles; free this stage's models before the next stage loads its own
        if "stopped" in results[-1].notes:  # no final model for the next stage, and no DONE: a rerun resumes it
            raise AlignError(f"{plan.label}: {results[-1].notes['stopped']}; its final model was not saved, so the "
                             f"pipeline stops here. See {plan.out / rundir.SUMMARY}; fix the cause and run the "
                             "pipeline again (it resumes the stage from its last checkpoint) or use "
                             f"--from {plan.name}")
        if rundir.is_main_process():
            _write_json(plan.out / DONE, {"config_hash": plan.config_hash,
                                          "finished_at": rundir.timestamp()})
        rundir.distributed_state().wait_for_everyone()
    return results


def _actions(plans: list[Plan], from_index: int | None, force: bool) -> dict[str, str]:
    """skip | run | resume | rerun for every stage, decided (and every conflict reported) before any training."""
    actions: dict[str, str] = {}
    stage_of = {str(plan.out): plan.name for plan in plans}
    for plan in plans:
        done = _read_json(plan.out / DONE)
        complete, _ = rundir.checkpoints(plan.out)
        started = bool(complete) or (plan.out / rundir.SUMMARY).is_file()
        if force or (from_index is not None and plan.index >= from_index):
            actions[plan.name] = "rerun"
        elif done is not None:
            if done.get("config_hash") != plan.config_hash:
                raise ConfigError(f"{plan.label}: its config changed since it finished in {plan.out}. Rerun it and "
                                  f"the stages after it with --from {plan.name}, or every stage with --force")
            rerun = [stage_of[path] for path in plan.inputs.values()
                     if path in stage_of and actions.get(stage_of[path]) not in (None, "skip")]
            if rerun:
                raise ConfigError(f"{plan.label}: finished, but its input stage {rerun[0]} will run again; "
                                  f"use --from {rerun[0]} to rerun both")
            actions[plan.name] = "skip"
        elif started:
            if _lineage(plan.out).get("config_hash") != plan.config_hash:
                _check_resumable(plan)
            actions[plan.name] = "resume"
        else:
            actions[plan.name] = "run"
    return actions


def _check_resumable(plan: Plan) -> None:
    """An interrupted stage whose config changed resumes when only keys that apply from its checkpoint on changed (a
    lower learning rate after a NaN); a key the checkpoint fixes is refused here, before any stage runs."""
    from align.stages import lifecycle

    try:
        lifecycle.resume_changes(plan.out, plan.cfg, log_changes=False)
    except ConfigError as err:
        raise ConfigError(f"{plan.label}: {plan.out} holds an interrupted run with another config: {err}; in a "
                          f"pipeline, start it over with --from {plan.name}") from err


def _check_inputs(plans: list[Plan], run_dir: Path) -> None:
    """Fail before any training on a data file or input model that does not exist and no stage will produce."""
    produced = {str(run_dir / plan.name) for plan in plans}
    for plan in plans:
        for split in ("train", "eval"):
            for i, source in enumerate(getattr(plan.cfg.data, split)):
                local = Path(source.path).suffix.lower() in FILE_TYPES or source.path.startswith((".", "/", "~"))
                if local and not Path(source.path).expanduser().is_file():
                    raise ConfigError(f"{plan.label}: data.{split}[{i}].path: file not found: {source.path}")
        for role, name in plan.inputs.items():
            path_like = name.startswith((".", "/", "~")) or name.count("/") > 1
            named = role in ("model", "reward_model", "value_model") or role.startswith("rewards[")
            key = f"{role}.name_or_path" if named else role
            if name in produced or name in registry.ALIASES or not path_like:
                continue
            if not Path(name).expanduser().is_dir():
                raise ConfigError(f"{plan.label}: {key}: model path {name!r} does not exist and no earlier stage "
                                  "writes it")


def _check_tokenizers(plans: list[Plan]) -> None:
    """Every input must have the vocabulary and chat template the first stage starts with: they travel with the
    model from stage to stage, and only a stage's model.chat_template could change them on the way."""
    first = plans[0].cfg.model
    produced = {str(plan.out) for plan in plans}
    seen: dict[tuple[str, str | None], dict[str, str]] = {}
    for plan in plans:
        for role, name in plan.inputs.items():
            template = plan.cfg.model.chat_template if role == "model" else None
            # A stage's output (maybe not written yet) carries the first tokenizer and template.
            source = first.name_or_path if name in produced else name
            if source == first.name_or_path:
                template = template or first.chat_template
            if (source, template) not in seen:
                model_cfg = (dataclasses.replace(first, chat_template=template) if source == first.name_or_path
                             else ModelConfig(name_or_path=source, chat_template=template))
                seen[source, template] = _tokenizer_fingerprint(model_cfg)
            found, expected = seen[source, template], next(iter(seen.values()))
            differs = [k for k in found if found[k] != expected[k]]
            if differs:
                raise ConfigError(f"{plan.label}: the tokenizer of {role} {name} differs from the one the pipeline "
                                  f"starts with ({', '.join(differs)}); every stage must share vocabulary and chat "
                                  "template (they travel with the model; check model.chat_template)")


def _inputs(stage_cfg: StageConfig) -> dict[str, str]:
    by_role = {"model": stage_cfg.model.name_or_path, "reference": getattr(stage_cfg, "reference", None)}
    for role in ("reward_model", "value_model"):
        section = getattr(stage_cfg, role, None)
        by_role[role] = getattr(section, "name_or_path", None)
    for i, reward in enumerate(getattr(stage_cfg, "rewards", [])):
        by_role[f"rewards[{i}]"] = reward.name_or_path
    return {role: name for role, name in by_role.items() if name is not None}


def _config_hash(stage_cfg: StageConfig) -> str:
    """Hash of what decides the stage's result: the config without run controls (resume/overwrite) and tracking."""
    values = config.to_dict(stage_cfg)
    values.pop("tracking", None)
    values["train"] = {k: v for k, v in values["train"].items() if k not in ("resume", "overwrite")}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _shared_tracking(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline's tracking keys that differ from the defaults (sub-sections key by key, so a stage keeps its own
    health settings the pipeline does not set), plus one group for the whole run."""

    def changed(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            if isinstance(value, dict):
                value = changed(value, defaults[key])
            if value != defaults[key] and value != {}:
                out[key] = value
        return out

    chosen = changed(config.to_dict(cfg.tracking), config.to_dict(TrackingConfig()))
    chosen.pop("name", None)
    return {**chosen, "group": cfg.tracking.group or Path(cfg.run_dir).name}


def _tokenizer_fingerprint(model_cfg: ModelConfig) -> dict[str, str]:
    from align import models

    tokenizer = models.load_tokenizer(model_cfg)
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return {"vocabulary": _sha(vocab), "chat_template": _sha(str(tokenizer.chat_template)),
            "eos_token": str(tokenizer.eos_token), "pad_token": str(tokenizer.pad_token)}


def _lineage_record(plan: Plan, produced: dict[str, Plan], tokenizer: dict[str, str]) -> dict[str, Any]:
    inputs = {}
    for role, name in plan.inputs.items():
        upstream = produced.get(name)
        inputs[role] = {"name_or_path": name, **({"stage": upstream.name, "config_hash": upstream.config_hash}
                                                 if upstream else {})}
    return {"stage": plan.name, "index": plan.index, "config_hash": plan.config_hash, "inputs": inputs,
            "data": data_fingerprint(plan.cfg.data), "tokenizer": tokenizer,
            "started_at": rundir.timestamp()}


def data_fingerprint(data_cfg: DataConfig) -> dict[str, Any]:
    """sha256 of every local source file plus the format and mixing settings; hub datasets by id and split."""
    sources = []
    for split in ("train", "eval"):
        for source in getattr(data_cfg, split):
            path = Path(source.path).expanduser()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            sources.append({**dataclasses.asdict(source), "used_for": split, "sha256": digest})
    settings = {k: v for k, v in dataclasses.asdict(data_cfg).items() if k not in ("train", "eval")}
    return {"fingerprint": _sha(json.dumps([sources, settings], sort_keys=True)), "sources": sources,
            "settings": settings}


def _lineage(out: Path) -> dict[str, Any]:
    return _read_json(out / LINEAGE) or {}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
