"""The PPO stage's own config sections: the reward model or rule, the value model, and the `ppo:` hyper-parameters.

Defaults follow TRL 1.12 / the N+ implementation details (ppo.md a.8) unless a field says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from align import reward_functions


@dataclass
class RewardModelConfig:
    name_or_path: str | None = None
    """A trained reward model (the reward stage's output, a local dir or hub id), read at the reply's EOS token."""
    function: str | None = None
    """A rule instead: `module:function` or `path/to/file.py:function`, called on the decoded texts as
    fn(prompts: list[str], completions: list[str]) -> list[float]."""

    def check(self) -> list[str]:
        if (self.name_or_path is None) == (self.function is None):
            return ["name_or_path: set exactly one of name_or_path (a reward model) and function (a rule)"]
        problem = self.function and reward_functions.spec_problem(self.function)
        return [f"function: {problem}"] if problem else []


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
    """subtract: score - penalty (TRL). replace: the score becomes -penalty (N+ "EOS trick")."""
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
    """Token that carries the score: the EOS, or one past it with an extra value target there (TRL 1.12 / N+;
    only for TRL parity)."""
    sample_every: int = 0
    """Every N updates, write prompts, completions and scores to <output_dir>/samples.jsonl (and W&B); 0: never."""
    trl_parity: bool = False
    """Reproduce TRL 1.12's metrics bit for bit: temperature + 1e-7, the pad may be sampled, prompts shuffled by
    the global torch generator, approxkl/entropy/ratio averaged over padding. Needs score_index=after_eos and
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
