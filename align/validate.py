"""`align validate`: load every YAML config under the given paths with the strict loaders; trains nothing."""

from __future__ import annotations

from pathlib import Path

from align import config, stages
from align.errors import USER_ERRORS


def find_yaml(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")))
        else:
            found.append(path)
    return found


def validate_file(path: Path) -> None:
    """Raise the user error that loading `path` produces, if any."""
    raw = config.read_yaml(path)
    if raw.get("stage") == "sweep":
        from align import sweep

        config.load_config(sweep.SweepConfig, path)
    elif raw.get("stage") == "pipeline":
        from align import pipeline

        pipeline.load(path)
    elif "stage" in raw:
        stages.load(str(raw["stage"]), path)
    elif "compute_environment" in raw or "distributed_type" in raw:
        _validate_accelerate(path)
    else:
        raise config.ConfigError(
            f"cannot tell what this file configures: add `stage: <{'|'.join([*stages.STAGES, 'pipeline', 'sweep'])}>` "
            "at the top"
        )


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
