"""ORPO stage: SFT and preference optimisation in one loss, with no reference model, through TRL's ORPOTrainer.

Paper: https://huggingface.co/papers/2403.07691. Loss: the chosen reply's NLL + beta x -log sigmoid(log-odds of the
chosen reply - log-odds of the rejected one), on per-token mean log-probs. No reference model is loaded, so it needs
the memory of the policy alone and can start from a base model.

ORPO and SimPO are two stages (`align orpo`, `align simpo`), not one with a `loss` key: they are two methods from two
papers with different knobs (ORPO's odds-ratio weight, SimPO's target margin and optional NLL weight) and
different TRL trainers, and users look them up by name. What they share (pairs, policy, held-out check) is
align/stages/preference.py `reference_free_build`.

TRL ships ORPOTrainer under `trl.experimental`: its API may change or go in any TRL release. align is tested with
trl 1.16.0 (README, "Tested versions"); tests/stages/test_orpo_simpo.py is what shows a later TRL broke it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from align.observe.tracking import Tracker
from align.rundir import StageResult
from align.sections import DataConfig, ModelConfig, TrackingConfig, TrainConfig
from align.stages import preference
from align.stages import trainer as trainer_stage

log = logging.getLogger(__name__)

MODEL_RANKING = "orpo policy per-token log-prob margin"


@dataclass(kw_only=True)
class ORPOConfig:
    stage: Literal["orpo"] = "orpo"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    """The starting policy: a base model (ORPO needs no sft stage first) or an sft output (an adapter dir is
    merged)."""
    data: DataConfig
    """Preference pairs; the eval pairs (data.eval or data.eval_fraction) give the eval metrics and held-out check."""
    train: TrainConfig
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    beta: float = 0.1
    """Weight of the odds-ratio term against the chosen reply's NLL (the paper's lambda; it uses 0.1-0.25)."""
    save_merged: bool = False
    """With LoRA: also save the policy merged into its base weights under <output_dir>/merged."""
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra trl.experimental.orpo.ORPOConfig fields we do not expose, checked against that class; for experts."""
    held_out_checks: bool = True
    """After training, on the eval pairs: how often the saved policy gives the chosen reply the higher per-token
    log-prob, beside the baselines it must beat (length, the starting policy's own margins), with 95% intervals."""

    def check(self) -> list[str]:
        problems = []
        if self.beta <= 0:
            problems.append(f"beta: must be > 0, got {self.beta}")
        if self.save_merged and not self.model.lora.enabled:
            problems.append("save_merged: only applies with model.lora.enabled=true")
        problems += trainer_stage.check_trainer_overrides(
            self.trainer_overrides, "experimental.orpo.ORPOConfig", {**trainer_stage.OWNED_ARGUMENTS, "beta": "beta"})
        return problems


def build(cfg: ORPOConfig, tracker: Tracker) -> trainer_stage.TrainerBuild:
    """Load tokenizer, pairs and policy and return a ready trainer. Trains nothing."""
    from trl.experimental import orpo

    return preference.reference_free_build(cfg, tracker, stage="orpo", trainer_class=orpo.ORPOTrainer,
                                           config_class=orpo.ORPOConfig, ranking=MODEL_RANKING, beta=cfg.beta)


def run(cfg: ORPOConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "orpo", build)
