"""The numbers `align eval` reports, from scores and log-probs already computed: win outcomes and their bootstrap
interval, the implicit DPO reward metrics, and a judge's accuracy on preference pairs. No model runs here."""

from __future__ import annotations


def win_outcomes(policy_scores: list[float], reference_scores: list[float]) -> list[float]:
    """Per prompt: 1 where the policy's reply scores higher, 0.5 on a tie, 0 where the reference's does."""
    return [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_scores, reference_scores, strict=True)]


def bootstrap_ci(values: list[float], *, samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean: resample the values with replacement `samples` times
    (seeded, so the same inputs give the same interval) and take the central `level` of the resampled means."""
    import torch

    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    data = torch.tensor(values, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    means = data[torch.randint(len(values), (samples, len(values)), generator=generator)].mean(dim=1)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return low, high


def implicit_reward_metrics(policy_chosen: list[float], policy_rejected: list[float], ref_chosen: list[float],
                            ref_rejected: list[float], beta: float) -> tuple[dict[str, float], list[float]]:
    """TRL-named DPO metrics from summed reply log-probs, and the per-pair margins.

    rewards/chosen = beta * (log pi(c) - log pi_ref(c)), likewise rejected; rewards/margins their difference;
    rewards/accuracies the fraction of pairs with a positive margin (beta > 0 does not change its sign).
    """
    n = len(policy_chosen)
    chosen = [beta * (p - r) for p, r in zip(policy_chosen, ref_chosen, strict=True)]
    rejected = [beta * (p - r) for p, r in zip(policy_rejected, ref_rejected, strict=True)]
    margins = [c - r for c, r in zip(chosen, rejected)]
    metrics = {
        "rewards/accuracies": sum(m > 0 for m in margins) / n,
        "rewards/margins": sum(margins) / n,
        "rewards/chosen": sum(chosen) / n,
        "rewards/rejected": sum(rejected) / n,
        "logps/chosen": sum(policy_chosen) / n,
        "logps/rejected": sum(policy_rejected) / n,
    }
    return metrics, margins


def judge_pair_metrics(chosen_scores: list[float], rejected_scores: list[float]) -> dict[str, float]:
    """The judge's accuracy (chosen scored strictly higher) and mean score margin on preference pairs."""
    n = len(chosen_scores)
    diffs = [c - r for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    return {"accuracy": sum(d > 0 for d in diffs) / n, "margin_mean": sum(diffs) / n}
