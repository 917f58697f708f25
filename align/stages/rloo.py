"""RLOO stage: REINFORCE leave-one-out through trl.RLOOTrainer.

Paper: https://huggingface.co/papers/2402.14740. Each prompt gets num_generations completions; a completion's
advantage is its reward minus the mean reward of the other completions of its prompt, the KL to the starting policy
(beta) is subtracted from the reward itself, and the policy takes clipped policy-gradient steps. What it shares with
GRPO (prompts, rewards, reference, callbacks) lives in align/stages/group_rl.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from align.observe.tracking import Tracker
from align.rundir import StageResult
from align.stages import group_rl
from align.stages import trainer as trainer_stage


@dataclass(kw_only=True)
class RLOOConfig(group_rl.GroupRLConfig):
    stage: Literal["rloo"] = "rloo"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    num_generations: int = 2
    """Completions sampled per prompt; each one's baseline is the mean reward of the others (TRL's default: 2)."""
    beta: float = 0.05
    """KL coefficient (TRL's default): beta x the completion's summed log-ratio to the reference is subtracted from
    its reward, so the logged `reward` includes the penalty (rewards/<name>/mean do not)."""
    normalize_advantages: bool = False
    """Scale the advantages of each batch to zero mean and unit variance."""

    def check(self) -> list[str]:
        return self.group_problems("RLOOConfig", {"normalize_advantages": "normalize_advantages"})


def build(cfg: RLOOConfig, tracker: Tracker) -> trainer_stage.TrainerBuild:
    """Load tokenizer, rewards, prompts and policy and return a ready trl.RLOOTrainer. Trains nothing."""
    return group_rl.build(cfg, tracker, "RLOOConfig", "RLOOTrainer",
                          {"normalize_advantages": cfg.normalize_advantages})


def run(cfg: RLOOConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "rloo", build)
