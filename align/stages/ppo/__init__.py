"""PPO stage: optimise the policy against a reward model (or a Python rule) with a per-token KL penalty to a frozen
reference, a separate value model, GAE and clipped objectives. Our own loop on transformers + accelerate (+ peft).

Design notes, papers and TRL 1.12's defaults: docs/ppo.md. Every equation is a call into `align.rl`. The modules,
each importing only those listed after it: `loop` (run: the update loop and the final save), `update` (per-token
rewards, advantages, the PPO epochs and metrics of one update), `checkpoint` (checkpoints, resuming, samples, the
final save), `setup` (build: models, optimizer and prompts from the config), `rollout` (sampling and scoring),
`config` (PPOConfig and its sections; torch-free).

Unlike TRL 1.12's PPOTrainer (docs/ppo.md section 5):
1. the pad token is never sampled (in TRL a sampled pad silently ends the response);
2. one optimizer step per minibatch with explicit gradient accumulation (TRL steps on every micro-batch);
3. gradients are clipped at train.max_grad_norm, the policy's and the value model's separately (TRL never clips);
4. advantages are whitened over the rollout batch of all processes, and metrics are global;
5. approxkl, entropy and ratio are averaged over valid tokens only (TRL includes padding).
Policy and value model share one AdamW and learning rate, the value loss weighted by ppo.vf_coef (as in TRL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from align.stages.ppo.config import PPOConfig

if TYPE_CHECKING:
    from align.stages.ppo.loop import run
    from align.stages.ppo.setup import build

__all__ = ["PPOConfig", "build", "run"]


def __getattr__(name: str):
    # build and run need torch: imported on first use, so that loading a PPO config (align validate) stays torch-free.
    if name == "build":
        from align.stages.ppo.setup import build

        return build
    if name == "run":
        from align.stages.ppo.loop import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
