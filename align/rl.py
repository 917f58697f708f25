"""Pure PPO maths for RLHF: token log-probs, masked statistics, KL penalty, per-token rewards, GAE and losses.

Papers: PPO https://huggingface.co/papers/1707.06347, GAE https://huggingface.co/papers/1506.02438,
KL control https://huggingface.co/papers/1909.08593 (Ziegler et al.).

Shapes: B = sequences in the batch, T = response positions, V = vocabulary size. A mask is a (B, T) bool tensor,
True on valid response tokens. Nothing here holds state except the two small KL controllers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

AllReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor element-wise over all processes: `accelerator.reduce` as is, or `distributed_sum(group)`."""


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each token under `softmax(logits / temperature)`.

    Args:
        logits: (B, T, V) next-token logits aligned with `tokens`.
        tokens: (B, T) token ids.
        temperature: the sampling temperature. Use the same value in the rollout, reference and training passes
            so the ratio and the KL compare the same distribution (TRL 1.12 uses `temperature + 1e-7`).

    Returns:
        (B, T) log-probabilities, float32 or wider.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # One row at a time, so no second (B, T, V) tensor is ever alive; low precision goes through float32 because
    # logsumexp in bfloat16 loses the small differences that the PPO ratio depends on.
    rows = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row_logits = row_logits if row_logits.dtype in (torch.float32, torch.float64) else row_logits.float()
        if temperature != 1.0:
            row_logits = row_logits / temperature
        picked = row_logits.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, T, V) logits -> (B, T) entropy in nats of `softmax(z)`, `z = logits / temperature`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float() / temperature
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1)


def distributed_sum(group: torch.distributed.ProcessGroup | None = None) -> AllReduce:
    """An `AllReduce` over a `torch.distributed` process group (None: the default group)."""

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=group)
        return total

    return reduce


def masked_sum(
    x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, all_reduce: AllReduce | None = None
) -> torch.Tensor:
    """Sum of `x` where `mask` is True; masked-out entries may hold anything, even NaN.

    Args:
        x: (B, T) values.
        mask: (B, T) bool.
        dim: reduce only this dimension; None reduces everything to a scalar.
        all_reduce: also sum over processes (only with `dim=None`).
    """
    if all_reduce is not None and dim is not None:
        raise ValueError(f"all_reduce needs dim=None, got dim={dim}")
    kept = torch.where(mask, x, torch.zeros_like(x))
    if dim is not None:
        return kept.sum(dim)
    return kept.sum() if all_reduce is None else all_reduce(kept.sum())


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, all_reduce: AllReduce | None = None
) -> torch.Tensor:
    """Mean of `x` where `mask` is True (NaN if nothing is); arguments as in `masked_sum`.

    With `all_reduce` it is summed values over summed counts of all processes, not a mean of per-process means.
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    if all_reduce is not None:
        count = all_reduce(count)
    return masked_sum(x, mask, dim, all_reduce) / count


def _masked_mean_var(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool, all_reduce: AllReduce | None
) -> tuple[torch.Tensor, torch.Tensor]:
    # Two passes (global mean, then summed squared deviations) rather than E[x^2] - E[x]^2, which cancels
    # catastrophically when the mean is large. On one process this is exactly TRL 1.12's arithmetic.
    count = mask.sum() if all_reduce is None else all_reduce(mask.sum())
    if unbiased and count < 2:
        raise ValueError(f"mask: an unbiased variance needs at least 2 valid tokens, got {int(count)}")
    mean = masked_sum(x, mask, all_reduce=all_reduce) / count
    variance = masked_sum((x - mean) ** 2, mask, all_reduce=all_reduce) / count
    return mean, variance * (count / (count - 1)) if unbiased else variance


def masked_var(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, all_reduce: AllReduce | None = None
) -> torch.Tensor:
    """Scalar variance of the valid entries of (B, T) `x` (of all processes with `all_reduce`).

    `unbiased` divides by n - 1 (TRL 1.12) rather than n (detail 25 of the N+ implementation details paper,
    https://huggingface.co/papers/2403.17031; docs/ppo.md section 3.5).
    """
    return _masked_mean_var(x, mask, unbiased, all_reduce)[1]


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    unbiased: bool = True,
    eps: float = 1e-8,
    all_reduce: AllReduce | None = None,
) -> torch.Tensor:
    """Scale the valid entries to unit variance, and zero mean if `shift_mean`; masked entries are returned as is.

    Args:
        x: (B, T) values, e.g. the advantages of the whole rollout batch.
        mask: (B, T) bool.
        shift_mean: False keeps the mean (TRL's reward whitening).
        unbiased: see `masked_var`.
        eps: added to the variance before the square root.
        all_reduce: use the statistics of every process's tokens, so each process gets exactly its slice of what
            whitening the concatenated batch on one process would give.

    Returns:
        (B, T) whitened values.
    """
    mean, variance = _masked_mean_var(x, mask, unbiased, all_reduce)
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, x)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, all_reduce: AllReduce | None = None
) -> torch.Tensor:
    """`1 - Var(returns - values) / Var(returns)` over valid tokens (of all processes with `all_reduce`).

    1 means the value model predicts the returns exactly, 0 no better than their mean, below 0 worse.
    Both variances are biased (divide by n), so the ratio does not depend on the convention.
    """
    error_var = masked_var(returns - values, mask, unbiased=False, all_reduce=all_reduce)
    return 1 - error_var / masked_var(returns, mask, unbiased=False, all_reduce=all_reduce)


def kl_estimate(
    logp: torch.Tensor, ref_logp: torch.Tensor, estimator: Literal["k1", "k2", "k3"] = "k1"
) -> torch.Tensor:
    """Per-token sample estimate of KL(policy || reference), http://joschu.net/blog/kl-approx.html.

    `logp` and `ref_logp` are (B, T) log-probs of tokens sampled from the policy; with `log_r = ref_logp - logp`:
    k1 = -log_r (unbiased, can be negative), k2 = log_r^2 / 2 (biased, >= 0), k3 = (exp(log_r) - 1) - log_r
    (unbiased, >= 0). Returns (B, T) estimates.
    """
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return (log_ratio.exp() - 1) - log_ratio
    raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


class KLController:
    """The KL coefficient `coef` and its checkpoint state; subclasses say how `update` moves it after a rollout."""

    coef: float

    def update(self, current_kl: float, n_steps: int) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = float(state["coef"])


class FixedKLController(KLController):
    """A constant KL coefficient."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"coef must be >= 0, got {coef}")
        self.coef = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""


class AdaptiveKLController(KLController):
    """Ziegler et al. (2019) proportional controller that steers the observed KL towards `target`.

    After each rollout: `error = clip(current_kl / target - 1, -0.2, 0.2)`, `coef *= 1 + error * n_steps / horizon`.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        for name, value in (("init_coef", init_coef), ("target", target), ("horizon", horizon)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.coef, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust the coefficient after a rollout.

        Args:
            current_kl: mean over the rollout's sequences of their summed per-token KL.
            n_steps: sequences in that rollout (TRL <= 0.11 passes the rollout batch size).
        """
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.coef *= 1 + proportional_error * n_steps / self.horizon


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B,) index of the first True in each row, or T where a row has none."""
    first = bools.to(torch.int8).argmax(dim=-1)  # argmax returns the first of equal maxima
    return torch.where(bools.any(dim=-1), first, bools.size(-1))


def response_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B,) lengths -> (B, T = max_length) bool, True on the first `lengths[b]` positions of row b."""
    return torch.arange(max_length, device=lengths.device) < lengths.unsqueeze(-1)


def truncate_after_eos(responses: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace every token after the first EOS with `pad_id`; the EOS itself is kept.

    Args:
        responses: (B, T) sampled response ids.
        eos_id: end-of-sequence id.
        pad_id: padding id, different from `eos_id`.

    Returns:
        (B, T) truncated responses and (B,) lengths: valid tokens per row including the EOS (T where there is none).
    """
    if eos_id == pad_id:
        raise ValueError(f"pad_id must differ from eos_id, both are {eos_id}")
    lengths = torch.clamp(first_true_indices(responses == eos_id) + 1, max=responses.size(1))
    return responses.masked_fill(~response_mask(lengths, responses.size(1)), pad_id), lengths


def per_token_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float | torch.Tensor,
    mask: torch.Tensor,
    score_index: Literal["eos", "after_eos"] = "eos",
) -> torch.Tensor:
    """Per-token rewards: `-kl_coef * kl` on valid tokens, plus each sequence's score at one position.

    Args:
        scores: (B,) reward-model scores.
        kl: (B, T) per-token KL estimates.
        kl_coef: the KL coefficient (beta).
        mask: (B, T) bool, a prefix of L valid tokens per row (the EOS included).
        score_index: where the score goes in a row of width T:
            "eos": index L - 1, the EOS (or the last token when there is none); legacy TRL / OpenRLHF; our default.
            "after_eos": index min(L, T - 1), one slot past the EOS: TRL 1.12 and the code of the N+
                implementation details paper (their `padding_mask_p1`; docs/ppo.md section 3.3). Only for parity
                with TRL, and then GAE and the value loss must use the mask of L + 1 tokens.

    Returns:
        (B, T) rewards, 0 outside `mask` except at the "after_eos" slot.
    """
    lengths = mask.sum(dim=-1)
    if score_index == "eos":
        if bool((lengths < 1).any()):
            raise ValueError("mask: every row needs at least one valid token to carry its score")
        index = lengths - 1
    elif score_index == "after_eos":
        index = torch.clamp(lengths, max=mask.size(1) - 1)
    else:
        raise ValueError(f"score_index must be 'eos' or 'after_eos', got {score_index!r}")
    rewards = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    rewards[torch.arange(rewards.size(0), device=rewards.device), index] += scores
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.

    `delta_t = r_t + gamma * V_{t+1} - V_t`, `A_t = delta_t + gamma * lam * A_{t+1}`, with rewards and values outside
    `mask` taken as 0, so the last valid token bootstraps from nothing: the episode ends there.

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) value of the state before each token.
        mask: (B, T) bool, a prefix of valid positions per row.
        gamma, lam: discount and GAE lambda.

    Returns:
        (B, T) advantages and (B, T) returns = advantages + values, both 0 outside `mask`.
    """
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    values = torch.where(mask, values, torch.zeros_like(values))
    advantage = next_value = torch.zeros_like(values[:, 0])
    advantages_reversed = []
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * advantage
        advantages_reversed.append(advantage)
        next_value = values[:, t]
    advantages = torch.where(mask, torch.stack(advantages_reversed[::-1], dim=1), torch.zeros_like(values))
    return advantages, advantages + values


def policy_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate `mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))` over valid tokens.

    Args:
        logp_new: (B, T) log-probs under the policy being optimised (with grad).
        logp_old: (B, T) log-probs recorded at rollout time; `advantages` and `mask` are (B, T) too.
        clip_eps: ratio clip range.

    Returns:
        The loss; the fraction of valid tokens where the clipped term is the larger one; and
        `approxkl = 0.5 * mean((logp_new - logp_old)^2)` over valid tokens (TRL 1.12 averaged over padding too).
        The last two are detached.
    """
    log_ratio = logp_new - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approxkl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approxkl


def value_loss(
    values_new: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss `0.5 * mean(max((v - R)^2, (clip(v, v_old - eps, v_old + eps) - R)^2))` over valid tokens.

    Args:
        values_new: (B, T) predictions of the value model being optimised (with grad).
        values_old: (B, T) predictions recorded at rollout time; `returns` and `mask` are (B, T) too.
        clip_eps: how far a prediction may move from `values_old` before its gradient is cut.

    Returns:
        The loss and the (detached) fraction of valid tokens where the clipped term is the larger one.
    """
    clipped_values = torch.clamp(values_new, values_old - clip_eps, values_old + clip_eps)
    unclipped_error = (values_new - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clipfrac


def missing_eos_penalty(
    scores: torch.Tensor, has_eos: torch.Tensor, penalty: float, mode: Literal["subtract", "replace"] = "subtract"
) -> torch.Tensor:
    """Penalise the (B,) `scores` of responses without an EOS (cut at the length limit); (B,) bool `has_eos`.

    `penalty` is a positive amount. "subtract": `score - penalty` (TRL 1.12 `missing_eos_penalty`); "replace": the
    score becomes `-penalty` (the "EOS trick" of the N+ implementation details paper uses -1; docs/ppo.md section
    3.3). Rows with an EOS are unchanged.
    """
    if mode == "subtract":
        penalised = scores - penalty
    elif mode == "replace":
        penalised = torch.full_like(scores, -penalty)
    else:
        raise ValueError(f"mode must be 'subtract' or 'replace', got {mode!r}")
    return torch.where(has_eos, scores, penalised)
