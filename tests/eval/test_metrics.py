"""align.eval.metrics against values worked out by hand."""

from __future__ import annotations

from align.eval import metrics


def test_win_outcomes_count_ties_as_half():
    assert metrics.win_outcomes([1.0, 0.0, 2.0], [0.5, 0.0, 3.0]) == [1.0, 0.5, 0.0]


def test_bootstrap_ci_is_seeded_and_contains_the_mean():
    values = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5]
    mean = sum(values) / len(values)
    low, high = metrics.bootstrap_ci(values, samples=500, seed=1)
    assert low < mean < high and 0.0 <= low and high <= 1.0
    assert metrics.bootstrap_ci(values, samples=500, seed=1) == (low, high)
    assert metrics.bootstrap_ci(values, samples=500, seed=2) != (low, high)
    assert metrics.bootstrap_ci([1.0] * 5) == (1.0, 1.0)


def test_implicit_reward_metrics_by_hand():
    result, margins = metrics.implicit_reward_metrics([-10.0, -20.0], [-12.0, -15.0], [-11.0, -19.0],
                                                      [-11.0, -18.0], beta=0.5)
    # log-ratios: chosen (1, -1), rejected (-1, 3) -> rewards chosen (0.5, -0.5), rejected (-0.5, 1.5)
    assert margins == [1.0, -2.0]
    assert result == {"rewards/accuracies": 0.5, "rewards/margins": -0.5, "rewards/chosen": 0.0,
                      "rewards/rejected": 0.5, "logps/chosen": -15.0, "logps/rejected": -13.5}
    beta_free, _ = metrics.implicit_reward_metrics([-10.0, -20.0], [-12.0, -15.0], [-11.0, -19.0],
                                                   [-11.0, -18.0], beta=0.01)
    assert beta_free["rewards/accuracies"] == result["rewards/accuracies"]


def test_judge_pair_metrics():
    assert metrics.judge_pair_metrics([1.0, 0.0, 2.0], [0.0, 0.0, 3.0]) == {"accuracy": 1 / 3, "margin_mean": 0.0}
