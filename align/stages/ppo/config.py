"""The PPO stage's config: `PPOConfig` and its own sections (the reward model or rule, the value model, and the
`ppo:` hyper-parameters). Torch-free, so that loading a config (`align validate`) stays fast.

Defaults follow TRL 1.12 and the N+ implementation details paper (docs/ppo.md sections 1 and 5) unless a field says
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from align.sections import DataConfig, ModelConfig, RewardSource, TrackingConfig, TrainConfig


@dataclass
class ValueModelConfig:
    name_or_path: str | None = None
    """Initial weights of the value model (trained in full). null: the reward model; with a reward function, the
    policy's checkpoint under a new value head."""


@dataclass
class PPOSection:
    rollout_batch_size: int = 64
    """Prompts per PPO update, over all processes (each samples its equal share)."""
    mini_batches: int = 1
    """Minibatches per PPO epoch; one optimizer step each."""
    ppo_epochs: int = 4
    """Passes over each rollout batch, with a fresh permutation each."""
    micro_batch: int = 8
    """Rows per forward/backward pass on each process (gradients accumulate over a minibatch's micro-batches); also
    the rows per scoring pass of the rollout."""
    response_length: int = 64
    """Maximum new tokens per response."""
    temperature: float = 0.7
    """Sampling temperature, applied as logits / T in every log-prob pass (rollout, reference, training)."""
    top_k: int = 0
    """0: off. Log-probs always use the full tempered distribution."""
    top_p: float = 1.0
    """1.0: off."""
    missing_eos_penalty: float | None = None
    """Penalise responses cut at response_length without an EOS (TRL's docs recommend 1.0); null: off."""
    missing_eos_mode: Literal["subtract", "replace"] = "subtract"
    """subtract: score - penalty (TRL). replace: the score becomes -penalty (the N+ paper's "EOS trick")."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """k1 = log(pi/ref), unbiased but can be negative; k3 = (r - 1) - log r, never negative."""
    kl_coef: float = 0.05
    """KL penalty coefficient (the initial one when adaptive)."""
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    kl_target: float = 6.0
    """adaptive: the summed per-response KL the coefficient steers towards (Ziegler et al.)."""
    kl_horizon: float = 10000.0
    """adaptive: how many responses it takes to close the gap."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """Policy ratio clip range."""
    value_clip_eps: float = 0.2
    """How far a value prediction may move from its rollout value before the clipped loss takes over."""
    vf_coef: float = 0.1
    """Weight of the value loss in the one loss that policy and value model share."""
    entropy_coef: float = 0.0
    """Entropy bonus in the loss (0: entropy is only logged)."""
    whiten_rewards: bool = False
    """Scale per-token rewards to unit variance over the batch (mean kept), before GAE."""
    reward_normalize: bool = False
    """Whiten scores over the rollout batch of all processes (zero mean, unit variance), after the EOS penalty."""
    reward_clip: float | None = None
    """Clip scores to [-reward_clip, reward_clip] (after normalisation); null: off."""
    score_index: Literal["eos", "after_eos"] = "eos"
    """Token that carries the score: the EOS, or one past it with an extra value target there (TRL 1.12 and the N+
    paper's code; only for TRL parity, docs/ppo.md section 3.3)."""
    sample_every: int = 0
    """Every N updates, write prompts, completions and scores to <output_dir>/samples.jsonl (and W&B); 0: never."""
    trl_parity: bool = False
    """Reproduce TRL 1.12's metrics bit for bit: temperature + 1e-7, the pad may be sampled, prompts shuffled by
    the global torch generator, approxkl/entropy/ratio averaged over padding, the training pass's logits computed
    at every position (their gradient's rounding). Needs score_index=after_eos and
    train.max_grad_norm=0. See benchmarks/PPO_PARITY.md."""

    def check(self) -> list[str]:
        problems = [f"{name}: must be > 0, got {getattr(self, name)}" for name in
                    ("rollout_batch_size", "mini_batches", "ppo_epochs", "micro_batch", "response_length",
                     "temperature", "kl_target", "kl_horizon", "clip_eps", "value_clip_eps") if getattr(self, name) <= 0]
        problems += [f"{name}: must be >= 0, got {getattr(self, name)}" for name in
                     ("top_k", "kl_coef", "vf_coef", "entropy_coef", "sample_every") if getattr(self, name) < 0]
        problems += [f"{name}: must be > 0 or null, got {getattr(self, name)}" for name in
                     ("missing_eos_penalty", "reward_clip") if getattr(self, name) is not None and getattr(self, name) <= 0]
        problems += [f"{name}: must be in [0, 1], got {getattr(self, name)}" for name in ("gamma", "lam")
                     if not 0 <= getattr(self, name) <= 1]
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.kl_controller == "adaptive" and self.kl_coef <= 0:
            problems.append("kl_coef: the adaptive controller scales it, so it must start > 0")
        if self.rollout_batch_size % self.mini_batches or (self.rollout_batch_size // self.mini_batches) % self.micro_batch:
            problems.append(f"rollout_batch_size: {self.rollout_batch_size} must split into mini_batches="
                            f"{self.mini_batches} minibatches of whole micro_batch={self.micro_batch} micro-batches")
        if self.trl_parity and self.score_index != "after_eos":
            problems.append("trl_parity: TRL 1.12 puts the score one past the EOS; set score_index=after_eos")
        return problems


@dataclass(kw_only=True)
class PPOConfig:
    stage: Literal["ppo"] = "ppo"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    """The policy to optimise (usually the sft stage's output); LoRA optional."""
    reward_model: RewardSource
    value_model: ValueModelConfig = field(default_factory=ValueModelConfig)
    reference: str | None = None
    """The KL reference. null: the starting policy (with LoRA its adapters disabled, otherwise a frozen copy)."""
    data: DataConfig
    """Prompts: `prompt` rows, or the prompts of any preference / sft source."""
    train: TrainConfig
    """max_steps counts PPO updates (-1: `epochs` passes over the prompts); learning_rate 3e-6 with a linear
    schedule is the usual full fine-tuning choice; max_grad_norm 0 turns clipping off."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ppo: PPOSection = field(default_factory=PPOSection)
    save_merged: bool = False
    """With LoRA: also save the policy merged into its base weights under <output_dir>/merged."""

    def check(self) -> list[str]:
        problems = []
        if self.save_merged and not self.model.lora.enabled:
            problems.append("save_merged: only applies with model.lora.enabled=true")
        unset = TrainConfig(output_dir=self.train.output_dir)  # PPO batches by its own ppo.* fields instead
        if (self.train.batch_size, self.train.grad_accum) != (unset.batch_size, unset.grad_accum):
            problems.append("train.batch_size: PPO batches with ppo.rollout_batch_size, ppo.mini_batches and "
                            "ppo.micro_batch; leave train.batch_size and train.grad_accum unset")
        if self.data.eval or self.data.eval_fraction or self.train.eval_steps or self.train.early_stopping.enabled:
            problems.append("data.eval: PPO has no evaluation pass; remove data.eval, data.eval_fraction, "
                            "train.eval_steps and train.early_stopping")
        if self.model.freeze.active():
            problems.append("model.freeze: not supported by PPO; train fewer weights with model.lora instead")
        if self.ppo.response_length >= self.train.max_length:
            problems.append(f"train.max_length: must exceed ppo.response_length={self.ppo.response_length} "
                            "(it bounds prompt + response)")
        if self.ppo.trl_parity and self.train.max_grad_norm > 0:
            problems.append("ppo.trl_parity: TRL 1.12 never clips gradients; set train.max_grad_norm=0")
        return problems
