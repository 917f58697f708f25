"""GRPO stage: group relative policy optimisation through trl.GRPOTrainer.

Paper: https://huggingface.co/papers/2402.03300 (DeepSeekMath). Each prompt gets num_generations completions; a
completion's advantage is its reward minus its group's mean (divided by the group's std with scale_rewards=group),
and the policy takes clipped policy-gradient steps on it, with an optional KL term (beta) towards the starting
policy. What it shares with RLOO (prompts, rewards, reference, callbacks) lives in align/stages/group_rl.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from align.observe.tracking import Tracker
from align.rundir import StageResult
from align.stages import group_rl
from align.stages import trainer as trainer_stage


@dataclass(kw_only=True)
class GRPOConfig(group_rl.GroupRLConfig):
    stage: Literal["grpo"] = "grpo"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    """How token losses are averaged (TRL's GRPO losses). dapo (TRL's default): over the active tokens of the whole
    step, no length bias; grpo: per sequence first (the paper's, biased to short right / long wrong answers);
    dr_grpo: by a constant (max_completion_length)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the reward std of the group (the paper), of the whole batch, or not at all (Dr. GRPO)."""

    def check(self) -> list[str]:
        return self.group_problems("GRPOConfig", {"loss_type": "loss_type", "scale_rewards": "scale_rewards"})


def build(cfg: GRPOConfig, tracker: Tracker) -> trainer_stage.TrainerBuild:
    """Load tokenizer, rewards, prompts and policy and return a ready trl.GRPOTrainer. Trains nothing."""
    return group_rl.build(cfg, tracker, "GRPOConfig", "GRPOTrainer",
                          {"loss_type": cfg.loss_type, "scale_rewards": cfg.scale_rewards})


def run(cfg: GRPOConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "grpo", build)
