"""SimPO stage: preference optimisation with a length-normalised reward and no reference model, through TRL's
CPOTrainer (SimPO is its loss_type="simpo").

Paper: https://huggingface.co/papers/2405.14734. The implicit reward of a reply is beta x its per-token mean
log-prob; loss: -log sigmoid(reward(chosen) - reward(rejected) - gamma), plus sft_weight x the chosen reply's NLL
(sft_weight > 0 is CPO-SimPO; 0, the default, is SimPO itself). No reference model is loaded.

ORPO and SimPO are two stages, not one with a `loss` key: align/stages/orpo.py says why.

TRL ships CPOTrainer under `trl.experimental`: its API may change or go in any TRL release. align is tested with
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

MODEL_RANKING = "simpo implicit reward"


@dataclass(kw_only=True)
class SimPOConfig:
    stage: Literal["simpo"] = "simpo"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    """The starting policy, usually an sft output (an adapter dir is merged)."""
    data: DataConfig
    """Preference pairs; the eval pairs (data.eval or data.eval_fraction) give the eval metrics and held-out check."""
    train: TrainConfig
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    beta: float = 2.0
    """Scale of the reward (per-token mean log-prob); the paper uses 2.0-2.5 (10 for some models)."""
    gamma: float = 0.5
    """Target reward margin between chosen and rejected replies (TRL's simpo_gamma); the paper tunes gamma/beta in
    0.3-0.8."""
    sft_weight: float = 0.0
    """Weight of the chosen reply's NLL added to the loss (TRL's cpo_alpha): 0 is SimPO, > 0 CPO-SimPO."""
    save_merged: bool = False
    """With LoRA: also save the policy merged into its base weights under <output_dir>/merged."""
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra trl.experimental.cpo.CPOConfig fields we do not expose, checked against that class; for experts."""
    held_out_checks: bool = True
    """After training, on the eval pairs: the saved policy's implicit-reward accuracy (chosen reply with the higher
    per-token log-prob) beside the baselines it must beat, with 95% intervals per source."""

    def check(self) -> list[str]:
        problems = []
        if self.beta <= 0:
            problems.append(f"beta: must be > 0, got {self.beta}")
        if self.sft_weight < 0:
            problems.append(f"sft_weight: must be >= 0, got {self.sft_weight}")
        if self.save_merged and not self.model.lora.enabled:
            problems.append("save_merged: only applies with model.lora.enabled=true")
        if "loss_type" in self.trainer_overrides:
            problems.append("trainer_overrides.loss_type: this stage trains SimPO's loss (CPO's other losses are "
                            "other methods); remove it")
        owned = {"beta": "beta", "simpo_gamma": "gamma", "cpo_alpha": "sft_weight"}
        problems += trainer_stage.check_trainer_overrides(
            {k: v for k, v in self.trainer_overrides.items() if k != "loss_type"}, "experimental.cpo.CPOConfig",
            {**trainer_stage.OWNED_ARGUMENTS, **owned})
        return problems


def build(cfg: SimPOConfig, tracker: Tracker) -> trainer_stage.TrainerBuild:
    """Load tokenizer, pairs and policy and return a ready trainer. Trains nothing."""
    from trl.experimental import cpo

    return preference.reference_free_build(cfg, tracker, stage="simpo", trainer_class=cpo.CPOTrainer,
                                           config_class=cpo.CPOConfig, ranking=MODEL_RANKING, loss_type="simpo",
                                           beta=cfg.beta, simpo_gamma=cfg.gamma, cpo_alpha=cfg.sft_weight)


def run(cfg: SimPOConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "simpo", build)
