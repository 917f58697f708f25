"""One PPO update after its rollout: per-token rewards and whitened advantages, the PPO epochs over minibatches,
and the update's metrics. Every equation is a call into `align.rl`; the loop around this is `loop.py`."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from align import generation, rl
from align.stages.ppo.config import PPOConfig, PPOSection
from align.stages.ppo.rollout import Experience, tempered
from align.stages.ppo.setup import PPOBuild


@dataclass
class ShapedRewards:
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


def shape_rewards(ppo_cfg: PPOSection, experience: Experience, kl_coef: float, all_reduce) -> ShapedRewards:
    """Scores (EOS penalty, normalisation, clipping) and the KL penalty as per-token rewards, then GAE."""
    width = experience.responses.size(1)
    mask = rl.response_mask(experience.lengths, width)
    value_mask = rl.response_mask(experience.lengths + 1, width) if ppo_cfg.score_index == "after_eos" else mask
    kl = torch.where(mask, rl.kl_estimate(experience.logprobs, experience.ref_logprobs, ppo_cfg.kl_estimator), 0)
    scores = experience.scores
    if ppo_cfg.missing_eos_penalty is not None:
        scores = rl.missing_eos_penalty(scores, experience.has_eos, ppo_cfg.missing_eos_penalty,
                                        ppo_cfg.missing_eos_mode)
    final = scores
    if ppo_cfg.reward_normalize:
        final = rl.masked_whiten(final[:, None], torch.ones_like(mask[:, :1]), all_reduce=all_reduce)[:, 0]
    if ppo_cfg.reward_clip is not None:
        final = final.clamp(-ppo_cfg.reward_clip, ppo_cfg.reward_clip)
    rewards = rl.per_token_rewards(final, kl, kl_coef, mask, ppo_cfg.score_index)
    if ppo_cfg.whiten_rewards:
        rewards = rl.masked_whiten(rewards, value_mask, shift_mean=False, all_reduce=all_reduce)
    advantages, returns = rl.gae(rewards, experience.values, value_mask, ppo_cfg.gamma, ppo_cfg.lam)
    whitened = torch.where(mask, rl.masked_whiten(advantages, mask, all_reduce=all_reduce), 0)
    return ShapedRewards(mask, value_mask, kl, scores, whitened, advantages, returns)


def ppo_epochs(cfg: PPOConfig, parts: PPOBuild, experience: Experience, shaped: ShapedRewards) -> dict[str, list]:
    """PPO epochs over the rollout: a fresh permutation each epoch, one optimizer step per minibatch. Returns each
    micro-batch's metrics and each minibatch's gradient norms, by metric name."""
    ppo_cfg, accelerator = cfg.ppo, parts.accelerator
    rows = experience.queries.size(0)
    params = {"policy": [q for q in parts.policy.parameters() if q.requires_grad],
              "value": [q for q in parts.value_model.parameters() if q.requires_grad]}
    stats: dict[str, list] = defaultdict(list)
    for _ in range(ppo_cfg.ppo_epochs):
        # numpy's global generator, as in TRL: parity needs the same draws
        order = torch.from_numpy(np.random.permutation(rows)).to(accelerator.device)
        for minibatch in order.split(rows // ppo_cfg.mini_batches):
            micro_batches = minibatch.split(ppo_cfg.micro_batch)
            for i, indices in enumerate(micro_batches):
                metrics = micro_step(ppo_cfg, parts, experience, shaped, indices, micro_batches=len(micro_batches),
                                     sync_gradients=i == len(micro_batches) - 1)
                for key, value in metrics.items():
                    stats[key].append(value)
            for name, group in params.items():
                norm = torch.nn.utils.get_total_norm([q.grad for q in group if q.grad is not None])
                if cfg.train.max_grad_norm > 0:
                    torch.nn.utils.clip_grads_with_norm_(group, cfg.train.max_grad_norm, norm)
                stats[f"grad_norm/{name}"].append(norm)
            parts.optimizer.step()
            parts.optimizer.zero_grad()
    return stats


def micro_step(ppo_cfg: PPOSection, parts: PPOBuild, experience: Experience, shaped: ShapedRewards,
               indices: torch.Tensor, *, micro_batches: int, sync_gradients: bool) -> dict[str, torch.Tensor]:
    """Forward and backward pass on the rollout rows `indices`, one of a minibatch's `micro_batches` micro-batches
    (its loss is divided by that count, so gradients accumulate to the minibatch mean). Returns its metrics."""
    mask, old = shaped.mask[indices], experience.logprobs[indices]
    # DDP averages gradients across processes on the minibatch's last micro-batch only.
    with contextlib.nullcontext() if sync_gradients else parts.accelerator.no_sync(parts.model):
        logits, values = parts.model(experience.sequences[indices], experience.queries.size(1), parts.sampler.pad_id)
        logits = tempered(logits, parts.sampler.temperature, parts.sampler.suppressed_id)
        new = rl.logprobs_from_logits(logits, experience.responses[indices])
        pg_loss, pg_clipfrac, approxkl = rl.policy_loss(new, old, shaped.advantages[indices], mask, ppo_cfg.clip_eps)
        vf_loss, vf_clipfrac = rl.value_loss(values, experience.values[indices], shaped.returns[indices],
                                             shaped.value_mask[indices], ppo_cfg.value_clip_eps)
        with torch.set_grad_enabled(ppo_cfg.entropy_coef > 0):
            entropy = rl.entropy_from_logits(logits)
        loss = pg_loss + ppo_cfg.vf_coef * vf_loss
        if ppo_cfg.entropy_coef:
            loss = loss - ppo_cfg.entropy_coef * rl.masked_mean(entropy, mask)
        parts.accelerator.backward(loss / micro_batches)
    with torch.no_grad():
        log_ratio = torch.where(mask, new - old, 0)
        if ppo_cfg.trl_parity:  # TRL 1.12 averages these over padding too (docs/ppo.md section 4, quirk 4)
            approxkl, ratio, entropy = 0.5 * (log_ratio**2).mean(), log_ratio.exp().mean(), entropy.mean()
        else:
            ratio, entropy = rl.masked_mean(log_ratio.exp(), mask), rl.masked_mean(entropy, mask)
    metrics = {"policy/approxkl_avg": approxkl, "policy/clipfrac_avg": pg_clipfrac, "loss/policy_avg": pg_loss,
               "loss/value_avg": vf_loss, "val/clipfrac_avg": vf_clipfrac, "policy/entropy_avg": entropy,
               "val/ratio": ratio}
    return {key: value.detach() for key, value in metrics.items()}


def update_metrics(cfg: PPOConfig, parts: PPOBuild, experience: Experience, shaped: ShapedRewards,
                   stats: dict[str, list], timing: dict[str, float], update: int) -> dict[str, float]:
    """TRL 1.12's metrics (same names and formulas) plus the extras of docs/ppo.md section 6, reduced over
    processes."""
    coef, reduce = parts.kl_controller.coef, parts.accelerator.reduce
    replies = [row[:n] for row, n in zip(experience.responses.tolist(), experience.lengths.tolist(), strict=True)]
    non_score = rl.masked_sum(-coef * shaped.kl, shaped.mask, dim=1).mean()
    local = {
        "objective/kl": rl.masked_sum(shaped.kl, shaped.mask, dim=1).mean(),
        "objective/entropy": rl.masked_sum(-experience.logprobs, shaped.mask, dim=1).mean(),
        "objective/non_score_reward": non_score,
        "objective/rlhf_reward": non_score + shaped.scores.mean(),
        "objective/scores": shaped.scores.mean(),
        **{key: torch.stack(values).mean() for key, values in stats.items()},
        "val/ratio_var": torch.stack(stats["val/ratio"]).var() if len(stats["val/ratio"]) > 1 else torch.tensor(0.0),
        "tokens/response_len_mean": experience.lengths.float().mean(),
        "val/frac_missing_eos": (~experience.has_eos).float().mean(),
        "val/mean": rl.masked_mean(experience.values, shaped.value_mask, all_reduce=reduce),
        "val/returns_mean": rl.masked_mean(shaped.returns, shaped.value_mask, all_reduce=reduce),
        "val/vf_explained_var": rl.explained_variance(experience.values, shaped.returns, shaped.value_mask, reduce),
        "policy/advantages_mean": rl.masked_mean(shaped.raw_advantages, shaped.mask, all_reduce=reduce),
        "policy/advantages_std": rl.masked_var(shaped.raw_advantages, shaped.mask, all_reduce=reduce).sqrt(),
        # Not TRL's: repeating replies is how the real run in docs/results_ppo.md gamed a weak reward model.
        "completions/repetition_rate": torch.tensor(generation.repetition_rate(replies, parts.sampler.eos_id),
                                                    device=experience.responses.device),
    }
    values = reduce(torch.stack([v.float() for v in local.values()]), reduction="mean").tolist()
    metrics = dict(zip(local, values))
    metrics["val/num_eos_tokens"] = int(reduce((experience.responses == parts.sampler.eos_id).sum(), reduction="sum"))
    episode = update * cfg.ppo.rollout_batch_size
    metrics.update({"objective/kl_coef": coef, "lr": parts.scheduler.get_last_lr()[0], "episode": episode,
                    "epoch": episode / len(parts.prompts.loader.dataset),
                    **{f"timing/{key}": value for key, value in timing.items()}})
    return metrics
