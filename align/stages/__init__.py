"""The training stages. Each is a module with `<Stage>Config`, `build(cfg, ...)` and `run(cfg)`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from align import config
from align.errors import ConfigError

# stage name -> (module, config class); imported on demand so `align --help` stays fast.
STAGES: dict[str, tuple[str, str]] = {
    "sft": ("align.stages.sft", "SFTConfig"),
    "reward": ("align.stages.reward", "RewardConfig"),
    "dpo": ("align.stages.dpo", "DPOConfig"),
    "ppo": ("align.stages.ppo", "PPOConfig"),
    "kto": ("align.stages.kto", "KTOConfig"),
    "orpo": ("align.stages.orpo", "ORPOConfig"),
    "simpo": ("align.stages.simpo", "SimPOConfig"),
    "grpo": ("align.stages.grpo", "GRPOConfig"),
    "rloo": ("align.stages.rloo", "RLOOConfig"),
}


def module(stage: str):
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[stage][0])


def config_class(stage: str) -> type:
    return getattr(module(stage), STAGES[stage][1])


def load(stage: str, path: str | Path | None = None, overrides: list[str] | None = None,
         base: dict[str, Any] | None = None) -> Any:
    """Load and check a stage config; a YAML written for another stage is refused before anything else."""
    raw = config.read_yaml(path) if path is not None else {}
    declared = raw.get("stage", stage)
    if declared != stage:
        raise ConfigError(f"{path}: this is a {declared!r} config (stage: {declared}); run `align {declared}` instead")
    return config.load_config(config_class(stage), path, overrides, base=base)


def run(stage: str, cfg: Any):
    return module(stage).run(cfg)
