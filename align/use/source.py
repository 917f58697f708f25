"""The model `align chat` and `align export` work on: MODEL as `model.name_or_path` takes it (alias, stage output dir,
LoRA adapter dir, hub id) or a pipeline run dir, which stands for its last finished stage."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from align import models, registry, rundir
from align.errors import ModelError
from align.sections import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    name: str
    """What the user gave (or `<run dir>/<stage>` for a pipeline run)."""
    path: str
    """What the loaders take: a local checkpoint dir or a hub id."""

    @property
    def label(self) -> str:
        """A short name to show beside replies: the dir's name, else the hub id or alias."""
        local = Path(self.path)
        return local.resolve().name if local.is_dir() and self.name not in registry.ALIASES else self.name

    def model_config(self) -> ModelConfig:
        # fp32 whatever the device: the reference side of an export's check, and CPU chat, want full precision.
        return ModelConfig(name_or_path=self.path, dtype="fp32")


def resolve(model: str) -> Source:
    """The checkpoint `model` names; a pipeline run dir resolves to the policy stage that finished last."""
    local = Path(model).expanduser()
    if local.is_dir() and not models.is_model_dir(local):
        policies = [(stage, sub) for stage, sub in rundir.pipeline_stages(local) if stage != "reward"]
        if not policies:
            raise ModelError(f"{model!r} is a directory but neither a checkpoint (no config.json or "
                             f"{models.ADAPTER_CONFIG}) nor a pipeline run with a finished policy stage")
        stage, sub = policies[-1]
        log.info("pipeline run %s: using its last finished stage, %s (%s)", model, sub.name, stage)
        return Source(name=str(sub), path=str(sub))
    return Source(name=model, path=models.resolve_path(model))


def base_config(path: str) -> dict:
    """The config.json of the full model under `path`, following LoRA adapters down to their base; {} for a hub id
    that is not cached locally (its architecture is then checked when it loads)."""
    seen = []
    current = path
    while (base := models.adapter_base(current)) is not None:
        seen.append(current)
        if len(seen) > 16:
            raise ModelError(f"{path}: more than 16 stacked LoRA adapters, or adapters that name each other as base")
        current = models.resolve_path(base)
    file = Path(current) / "config.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def load(source: Source):
    """(tokenizer, causal LM in eval mode, fp32, on the device) of a source; LoRA adapters merged."""
    cfg = source.model_config()
    tokenizer = models.load_tokenizer(cfg, source.path)
    model = models.load_causal_lm(cfg, source.path).to(models.device()).eval()
    return tokenizer, model
