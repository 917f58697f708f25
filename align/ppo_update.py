"""One PPO update after its rollout: per-token rewards and whitened advantages, the PPO epochs over minibatches,
and the update's metrics. Every equation is a call into `align.rl`; the loop around this is `stages/ppo.py`."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from align import completions, ppo_rollout, rl
from align.ppo_sections import PPOSection

if TYPE_CHECKING:
    from align.stages.ppo import PPOBuild, PPOConfig


@dataclass
class Shaped:
    """Rewards and advantages of one rollout batch: (B, T) tensors unless noted."""

    mask: torch.Tensor
    """Valid response tokens."""
    value_mask: torch.Tensor
    """Positions with a value target: `mask`, plus the slot after it with score_index=after_eos."""
    kl: torch.Tensor
    scores: torch.Tensor
    """(B,) scores after the missing-EOS penalty (before normalisation and clipping)."""
    advantages: torch.Tensor
    """Whitened advantages, 0 outside `mask`."""
    raw_advantages: torch.Tensor
    returns: torch.Tensor


def shape_rewards(p: PPOSection, exp: ppo_rollout.Experience, kl_coef: float, all_reduce) -> Shaped:
    """Scores (EOS penalty, normalisation, clipping) and the KL penalty as per-token rewards, then GAE."""
    width = exp.responses.size(1)
    mask = rl.response_mask(exp.lengths, width)
    value_mask = rl.response_mask(exp.lengths + 1, width) if p.score_index == "after_eos" else mask
    kl = torch.where(mask, rl.kl_estimate(exp.logprobs, exp.ref_logprobs, p.kl_estimator), 0)
    scores = exp.scores
    if p.missing_eos_penalty is not None:
        scores = rl.missing_eos_penalty(scores, exp.has_eos, p.missing_eos_penalty, p.missing_eos_mode)
    final = scores
    if p.reward_normalize:
        final = rl.masked_whiten(final[:, None], torch.ones_like(mask[:, :1]), all_reduce=all_reduce)[:, 0]
    if p.reward_clip is not None:
        final = final.clamp(-p.reward_clip, p.reward_clip)
    rewards = rl.per_token_rewards(final, kl, kl_coef, mask, p.score_index)
    if p.whiten_rewards:
        rewards = rl.masked_whiten(rewards, value_mask, shift_mean=False, all_reduce=all_reduce)
    advantages, returns = rl.gae(rewards, exp.values, value_mask, p.gamma, p.lam)
    whitened = torch.where(mask, rl.masked_whiten(advantages, mask, all_reduce=all_reduce), 0)
    return Shaped(mask, value_mask, kl, scores, whitened, advantages, returns)


def optimise(cfg: PPOConfig, b: PPOBuild, exp: ppo_rollout.Experience, shaped: Shaped) -> dict[str, list]:
    """PPO epochs over the rollout: a fresh permutation each epoch, one optimizer step per minibatch."""
    p, acc = cfg.ppo, b.accelerator
    rows, context, sequences = exp.queries.size(0), exp.queries.size(1), exp.sequences
    params = {"policy": [q for q in b.policy.parameters() if q.requires_grad],
              "value": [q for q in b.value_model.parameters() if q.requires_grad]}
    stats: dict[str, list] = defaultdict(list)
    for _ in range(p.ppo_epochs):
        order = torch.from_numpy(np.random.permutation(rows)).to(acc.device)  # numpy, as TRL: parity needs its draws
        for minibatch in order.split(rows // p.mini_batches):
            micro_batches = minibatch.split(p.micro_batch)
            for i, idx in enumerate(micro_batches):
                mask, old = shaped.mask[idx], exp.logprobs[idx]
                # DDP averages gradients across processes on the minibatch's last micro-batch only.
                with contextlib.nullcontext() if i == len(micro_batches) - 1 else acc.no_sync(b.model):
                    logits, values = b.model(sequences[idx], context, b.sampler.pad_id)
                    logits = ppo_rollout.tempered(logits, b.sampler.temperature, b.sampler.suppressed_id)
                    new = rl.logprobs_from_logits(logits, exp.responses[idx])
                    pg_loss, pg_clipfrac, approxkl = rl.policy_loss(new, old, shaped.advantages[idx], mask, p.clip_eps)
                    vf_loss, vf_clipfrac = rl.value_loss(values, exp.values[idx], shaped.returns[idx],
                                                         shaped.value_mask[idx], p.value_clip_eps)
                    with torch.set_grad_enabled(p.entropy_coef > 0):
                        entropy = rl.entropy_from_logits(logits)
                    loss = pg_loss + p.vf_coef * vf_loss
                    if p.entropy_coef:
                        loss = loss - p.entropy_coef * rl.masked_mean(entropy, mask)
                    acc.backward(loss / len(micro_batches))
                with torch.no_grad():
                    log_ratio = torch.where(mask, new - old, 0)
                    if p.trl_parity:  # TRL 1.12 averages these over padding too (ppo.md a.7.4)
                        approxkl, ratio, entropy = 0.5 * (log_ratio**2).mean(), log_ratio.exp().mean(), entropy.mean()
                    else:
                        ratio, entropy = rl.masked_mean(log_ratio.exp(), mask), rl.masked_mean(entropy, mask)
                for key, value in (("policy/approxkl_avg", approxkl), ("policy/clipfrac_avg", pg_clipfrac),
                                   ("loss/policy_avg", pg_loss), ("loss/value_avg", vf_loss),
                                   ("val/clipfrac_avg", vf_clipfrac), ("policy/entropy_avg", entropy),
                                   ("val/ratio", ratio)):
                    stats[key].append(value.detach())
            for name, group in params.items():
                norm = torch.nn.utils.get_total_norm([q.grad for q in group if q.grad is not None])
                if cfg.train.max_grad_norm > 0:
                    torch.nn.utils.clip_grads_with_norm_(group, cfg.train.max_grad_norm, norm)
                stats[f"grad_norm/{name}"].append(norm)
            b.optimizer.step()
            b.optimizer.zero_grad()
    return stats


def update_metrics(cfg: PPOConfig, b: PPOBuild, exp: ppo_rollout.Experience, shaped: Shaped,
                   stats: dict[str, list], timing: dict[str, float], update: int) -> dict[str, float]:
    """TRL 1.12's metrics (same names and formulas) plus ppo.md section b's extras, reduced over processes."""
    coef, reduce = b.kl_controller.coef, b.accelerator.reduce
    replies = [row[:n] for row, n in zip(exp.responses.tolist(), exp.lengths.tolist(), strict=True)]
    non_score = rl.masked_sum(-coef * shaped.kl, shaped.mask, dim=1).mean()
    local = {
        "objective/kl": rl.masked_sum(shaped.kl, shaped.mask, dim=1).mean(),
        "objective/entropy": rl.masked_sum(-exp.logprobs, shaped.mask, dim=1).mean(),
        "objective/non_score_reward": non_score,
        "objective/rlhf_reward": non_score + shaped.scores.mean(),
        "objective/scores": shaped.scores.mean(),
        **{key: torch.stack(values).mean() for key, values in stats.items()},
        "val/ratio_var": torch.stack(stats["val/ratio"]).var() if len(stats["val/ratio"]) > 1 else torch.tensor(0.0),
        "tokens/response_len_mean": exp.lengths.float().mean(),
        "val/frac_missing_eos": (~exp.has_eos).float().mean(),
        "val/mean": rl.masked_mean(exp.values, shaped.value_mask, all_reduce=reduce),
        "val/returns_mean": rl.masked_mean(shaped.returns, shaped.value_mask, all_reduce=reduce),
        "val/vf_explained_var": rl.explained_variance(exp.values, shaped.returns, shaped.value_mask, reduce),
        "policy/advantages_mean": rl.masked_mean(shaped.raw_advantages, shaped.mask, all_reduce=reduce),
        "policy/advantages_std": rl.masked_var(shaped.raw_advantages, shaped.mask, all_reduce=reduce).sqrt(),
        # Not TRL's: repeating replies is how the real run in docs/results_ppo.md gamed a weak reward model.
        "completions/repetition_rate": torch.tensor(completions.repetition_rate(replies, b.sampler.eos_id),
                                                    device=exp.responses.device),
    }
    values = reduce(torch.stack([v.float() for v in local.values()]), reduction="mean").tolist()
    metrics = dict(zip(local, values))
    metrics["val/num_eos_tokens"] = int(reduce((exp.responses == b.sampler.eos_id).sum(), reduction="sum"))
    episode = update * cfg.ppo.rollout_batch_size
    metrics.update({"objective/kl_coef": coef, "lr": b.scheduler.get_last_lr()[0], "episode": episode,
                    "epoch": episode / len(b.prompts.loader.dataset),
                    **{f"timing/{key}": value for key, value in timing.items()}})
    return metrics
