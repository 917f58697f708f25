"""Layer freezing with gradual unfreezing (ULMFiT style: the highest frozen block thaws first).

The optimizer is created over every parameter before training starts; freezing only turns `requires_grad` off.
A frozen parameter then gets no gradient, and AdamW skips parameters without one entirely (no update, no weight
decay, no state), so frozen weights stay bit-identical and pick up normally once they thaw.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field

from transformers import TrainerCallback

from align.sections import FreezeConfig

log = logging.getLogger(__name__)

_LAYER = re.compile(r"\.(?:layers|h|blocks|block)\.(\d+)\.")
_EMBEDDING = re.compile(r"(embed_tokens|wte|wpe|word_embeddings|embed_positions)\.")


def layer_of(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def is_embedding(name: str) -> bool:
    return _EMBEDDING.search(name) is not None


@dataclass
class FreezePlan:
    """Which parameters start frozen, and in which order the scheduled ones thaw."""

    layers: list[int]
    """Frozen transformer blocks, in thawing order (highest first)."""
    embeddings: bool
    patterns: list[str]
    phases: list[dict] = field(default_factory=list)
    """(step, thawed blocks, trainable parameters) each time the set changed; reported in summary.json."""

    def frozen(self, name: str, thawed: int) -> bool:
        layer = layer_of(name)
        if layer is not None and layer in self.layers[thawed:]:
            return True
        if self.embeddings and is_embedding(name) and thawed < len(self.layers) + 1:
            return True
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


def plan(cfg: FreezeConfig, model) -> FreezePlan | None:
    if not cfg.active():
        return None
    layers = sorted({i for n, _ in model.named_parameters() if (i := layer_of(n)) is not None})
    if cfg.first_layers > len(layers):
        from align.errors import ConfigError

        raise ConfigError(f"model.freeze.first_layers: the model has {len(layers)} blocks, got {cfg.first_layers}")
    frozen_layers = sorted(layers[: cfg.first_layers], reverse=True)
    return FreezePlan(layers=frozen_layers, embeddings=cfg.embeddings, patterns=list(cfg.modules))


def thawed_at(cfg: FreezeConfig, step: int, epoch: float) -> int:
    """How many scheduled groups (blocks, then the embeddings) have thawed by `step` / `epoch`."""
    if cfg.unfreeze_every_steps:
        return step // cfg.unfreeze_every_steps
    return sum(1 for e in cfg.unfreeze_at_epochs if epoch >= e)


def apply(model, freeze: FreezePlan, thawed: int) -> int:
    """Set requires_grad for the plan at `thawed`; return the number of trainable parameters."""
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad_(not freeze.frozen(name, thawed))
        trainable += param.numel() if param.requires_grad else 0
    return trainable


class FreezeCallback(TrainerCallback):
    """Applies the plan when training starts (also after a resume) and thaws on schedule."""

    def __init__(self, cfg: FreezeConfig, freeze: FreezePlan):
        self.cfg = cfg
        self.freeze = freeze
        self.thawed = -1

    def _update(self, model, state) -> None:
        groups = len(self.freeze.layers) + int(self.freeze.embeddings)
        thawed = min(thawed_at(self.cfg, state.global_step, state.epoch or 0.0), groups)
        if thawed == self.thawed:
            return
        self.thawed = thawed
        trainable = apply(model, self.freeze, thawed)
        self.freeze.phases.append({"step": state.global_step, "thawed_groups": thawed, "trainable": trainable})
        log.info("step %d: %d frozen group(s) thawed, %s parameters trainable", state.global_step, thawed,
                 f"{trainable:,}")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._update(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._update(model, state)
