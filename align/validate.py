"""`align validate`: load every YAML config under the given paths with the strict loaders; trains nothing."""

from __future__ import annotations

import importlib
from pathlib import Path

from align import config, stages
from align.errors import USER_ERRORS

# `stage:` value -> (module, config class) of the configs that are neither a stage's nor a pipeline's: a sweep, and
# the config.yaml that `align eval` and `align probe` save. Imported on demand, so validating stays torch-free.
COMMANDS: dict[str, tuple[str, str]] = {
    "sweep": ("align.sweep", "SweepConfig"),
    "eval": ("align.eval.config", "EvalConfig"),
    "probe": ("align.probe.config", "ProbeConfig"),
}


def find_yaml(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


def validate_file(path: Path) -> None:
    """Raise the user error that loading `path` produces, if any."""
    raw = config.read_yaml(path)
    kind = str(raw["stage"]) if "stage" in raw else None
    if kind == "pipeline":
        from align import pipeline

        pipeline.load(path)  # its stage configs too
    elif kind == "sweep":
        from align import sweep

        sweep.load_trials(config.load_config(sweep.SweepConfig, path))  # its trial configs too
    elif kind in COMMANDS:
        module, name = COMMANDS[kind]
        config.load_config(getattr(importlib.import_module(module), name), path)
    elif kind is not None:
        stages.load(kind, path)
    elif "compute_environment" in raw or "distributed_type" in raw:
        _validate_accelerate(path)
    else:
        kinds = "|".join([*stages.STAGES, "pipeline", *COMMANDS])
        raise config.ConfigError(f"cannot tell what this file configures: add `stage: <{kinds}>` at the top")


def _validate_accelerate(path: Path) -> None:
    """Accelerate launch configs are checked by accelerate's own loader."""
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        load_config_from_file(str(path))
    except (TypeError, ValueError, KeyError) as e:
        raise config.ConfigError(f"not a valid accelerate config: {e}") from e


def validate_paths(paths: list[Path]) -> list[tuple[Path, str | None]]:
    """(path, problem or None) for every YAML file found."""
    results: list[tuple[Path, str | None]] = []
    files = find_yaml(paths)
    if not files:
        raise config.ConfigError(f"no YAML files found in {', '.join(map(str, paths))}")
    for path in files:
        try:
            validate_file(path)
            results.append((path, None))
        except USER_ERRORS as e:
            results.append((path, str(e)))
    return results
