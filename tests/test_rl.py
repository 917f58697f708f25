"""Tests for align.rl: every expected value is derived by hand in the docstring (or is a closed form), never by
running another implementation of the same formula."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from align import rl

LN2, LN3 = math.log(2.0), math.log(3.0)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --- log-probs and entropy ---------------------------------------------------------------------------------------


def test_logprobs_from_logits_with_temperature():
    """Logits (0, ln 3) give probabilities (1/4, 3/4) at T=1.

    At T=2 they become (0, ln 3 / 2), i.e. probabilities proportional to (1, sqrt 3):
    log p(token 1) = log(sqrt3 / (1 + sqrt3)) and log p(token 0) = log(1 / (1 + sqrt3)).
    """
    logits = torch.tensor([[[0.0, LN3], [0.0, LN3]]])
    tokens = torch.tensor([[0, 1]])
    close(rl.logprobs_from_logits(logits, tokens), [[math.log(0.25), math.log(0.75)]])
    sqrt3 = math.sqrt(3.0)
    close(
        rl.logprobs_from_logits(logits, tokens, temperature=2.0),
        [[math.log(1 / (1 + sqrt3)), math.log(sqrt3 / (1 + sqrt3))]],
    )


def test_logprobs_from_logits_upcasts_low_precision():
    """bfloat16 logits (0, 2) are exact in bf16; log p(token 1) = 2 - log(1 + e^2), returned in float32."""
    logits = torch.tensor([[[0.0, 2.0]]], dtype=torch.bfloat16)
    logp = rl.logprobs_from_logits(logits, torch.tensor([[1]]))
    assert logp.dtype == torch.float32
    close(logp, [[2.0 - math.log(1 + math.exp(2.0))]])


def test_logprobs_from_logits_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        rl.logprobs_from_logits(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), temperature=0.0)


def test_entropy_from_logits():
    """Uniform over 4 tokens: ln 4. Probabilities (1/4, 3/4): -(1/4 ln 1/4 + 3/4 ln 3/4) = ln 4 - (3/4) ln 3.

    Logits (0, 2 ln 3) at T=2 are (0, ln 3) at T=1, so they have the same entropy.
    """
    close(rl.entropy_from_logits(torch.zeros(1, 1, 4)), [[math.log(4.0)]])
    expected = math.log(4.0) - 0.75 * LN3
    close(rl.entropy_from_logits(torch.tensor([[[0.0, LN3]]])), [[expected]])
    close(rl.entropy_from_logits(torch.tensor([[[0.0, 2 * LN3]]]), temperature=2.0), [[expected]])


# --- masked statistics -------------------------------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 99.0]])
MASK = torch.tensor([[True, True, False], [True, False, False]])


def test_masked_sum_and_mean_ignore_padding_even_nan_and_inf():
    """Valid values 1, 2 | 4: sum 7, mean 7/3; per row sums (3, 4), means (1.5, 4)."""
    close(rl.masked_sum(X, MASK), 7.0)
    close(rl.masked_mean(X, MASK), 7.0 / 3.0)
    close(rl.masked_sum(X, MASK, dim=1), [3.0, 4.0])
    close(rl.masked_mean(X, MASK, dim=1), [1.5, 4.0])


def test_masked_sum_all_reduce_needs_full_reduction():
    with pytest.raises(ValueError, match="dim"):
        rl.masked_sum(X, MASK, dim=1, all_reduce=lambda t: t)


def test_masked_var():
    """Valid values 1, 2, 4; mean 7/3; deviations -4/3, -1/3, 5/3; squares sum to (16 + 1 + 25) / 9 = 14/3.

    Biased variance 14/9, unbiased (14/3) / 2 = 7/3.
    """
    close(rl.masked_var(X, MASK, unbiased=False), 14.0 / 9.0)
    close(rl.masked_var(X, MASK), 7.0 / 3.0)


def test_masked_var_unbiased_needs_two_tokens():
    with pytest.raises(ValueError, match="mask"):
        rl.masked_var(torch.ones(1, 2), torch.tensor([[True, False]]))


def test_masked_whiten_valid_tokens_only_and_padding_untouched():
    """Mean 7/3, unbiased variance 7/3 (see test_masked_var), so valid x maps to (x - 7/3) / sqrt(7/3):
    1 -> -0.8728716, 2 -> -0.2182179, 4 -> 1.0910895 (sum 0, sum of squares 2 = n - 1). Padding keeps 99.

    With shift_mean=False, 7/3 is added back: 1.4604617, 2.1151154, 3.4244228.
    """
    x = torch.tensor([[1.0, 2.0, 99.0], [4.0, 99.0, 99.0]])
    white = rl.masked_whiten(x, MASK, eps=0.0)
    close(white, [[-0.8728716, -0.2182179, 99.0], [1.0910895, 99.0, 99.0]])
    close(rl.masked_mean(white, MASK), 0.0)
    close(rl.masked_var(white, MASK), 1.0)
    close(rl.masked_whiten(x, MASK, shift_mean=False, eps=0.0), [[1.4604617, 2.1151154, 99.0], [3.4244228, 99.0, 99.0]])


def test_explained_variance():
    """Valid returns 1, 2, 4 (biased variance 14/9, see test_masked_var); values 0, 2, 3 leave errors 1, 0, 1:
    mean 2/3, squared deviations 1/9 + 4/9 + 1/9, biased variance 2/9. 1 - (2/9) / (14/9) = 6/7.
    Perfect values explain everything (1); the constant mean 7/3 explains nothing (0). Padding may hold NaN.
    """
    values = torch.tensor([[0.0, 2.0, float("nan")], [3.0, float("nan"), 5.0]])
    close(rl.explained_variance(values, X, MASK), 6.0 / 7.0)
    close(rl.explained_variance(X, X, MASK), 1.0)
    close(rl.explained_variance(torch.full_like(X, 7.0 / 3.0), X, MASK), 0.0)


class ThreadedAllReduce:
    """Simulates a sum all-reduce between `world_size` ranks that run in threads: each rank posts its tensor,
    waits for the others, and gets the same total."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size, timeout=10)
        self.posted: list[torch.Tensor | None] = [None] * world_size

    def for_rank(self, rank: int) -> rl.AllReduce:
        def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
            self.posted[rank] = tensor
            self.barrier.wait()
            total = torch.stack(self.posted).sum(dim=0)
            self.barrier.wait()  # nobody posts the next tensor before everyone has read this one
            return total

        return all_reduce


def test_cross_shard_whitening_equals_whole_batch_whitening():
    """Two shards of 2 and 4 rows with different numbers of valid tokens: a mean of per-shard means would be
    wrong, so whitening with summed statistics must equal whitening the concatenated batch on one process."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=generator) * 3 + 1
    mask = rl.response_mask(torch.tensor([1, 2, 5, 3, 4, 5]), 5)
    expected = rl.masked_whiten(x, mask)
    shards = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    reducer = ThreadedAllReduce(world_size=2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(rl.masked_whiten, shard_x, shard_mask, all_reduce=reducer.for_rank(rank))
            for rank, (shard_x, shard_mask) in enumerate(shards)
        ]
        whitened = torch.cat([future.result() for future in futures])
    close(whitened, expected, atol=1e-5)
    per_shard = torch.cat([rl.masked_whiten(shard_x, shard_mask) for shard_x, shard_mask in shards])
    assert not torch.allclose(per_shard, expected, atol=1e-3)  # the test can tell the two apart


def test_distributed_sum_with_a_real_process_group(tmp_path):
    """World size 1 (gloo): the sum over processes is the tensor itself, and whitening matches the local one."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.tensor([[1.0, 2.0, 99.0], [4.0, 99.0, 99.0]])
        close(rl.masked_whiten(x, MASK, all_reduce=rl.distributed_sum()), rl.masked_whiten(x, MASK))
    finally:
        torch.distributed.destroy_process_group()


# --- KL --------------------------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    """Policy p = 1/2, reference q = 1/4: log r = log(q/p) = -ln 2, r = 1/2.
    k1 = ln 2, k2 = (ln 2)^2 / 2, k3 = (1/2 - 1) + ln 2.
    Swapped (p = 1/4, q = 1/2): log r = ln 2, r = 2: k1 = -ln 2 (negative), k2 the same, k3 = (2 - 1) - ln 2.
    """
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    close(rl.kl_estimate(logp, ref, "k1"), [[LN2, -LN2]])
    close(rl.kl_estimate(logp, ref, "k2"), [[0.5 * LN2**2, 0.5 * LN2**2]])
    close(rl.kl_estimate(logp, ref, "k3"), [[LN2 - 0.5, 1 - LN2]])


def test_k3_and_k2_never_negative_k1_can_be():
    """(r - 1) - log r >= 0 for every r > 0 (log r <= r - 1), so k3 >= 0 whatever the sample; k2 is a square."""
    generator = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(64, 16, generator=generator) * 3, torch.randn(64, 16, generator=generator) * 3
    assert (rl.kl_estimate(logp, ref, "k3") >= 0).all()
    assert (rl.kl_estimate(logp, ref, "k2") >= 0).all()
    assert (rl.kl_estimate(logp, ref, "k1") < 0).any()
    close(rl.kl_estimate(logp, logp, "k3"), torch.zeros(64, 16))


def test_kl_estimate_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="estimator"):
        rl.kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# --- KL controllers ----------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_updates_by_hand_and_resumes():
    """init 0.2, target 6, horizon 10000, 128 samples per rollout.

    KL 9:   9/6 - 1 = 0.5, clipped to 0.2: coef = 0.2 * (1 + 0.2 * 128 / 10000) = 0.2 * 1.00256 = 0.200512.
    KL 5.4: 5.4/6 - 1 = -0.1 (inside the clip): coef = 0.200512 * (1 - 0.1 * 128 / 10000)
            = 0.200512 * 0.99872 = 0.20025534464.
    A controller restored from the state after step 1 makes the same second step.
    """
    controller = rl.AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000)
    controller.update(current_kl=9.0, n_steps=128)
    assert controller.coef == pytest.approx(0.200512, abs=1e-12)
    resumed = rl.AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000)
    resumed.load_state_dict(controller.state_dict())
    for ctl in (controller, resumed):
        ctl.update(current_kl=5.4, n_steps=128)
        assert ctl.coef == pytest.approx(0.20025534464, abs=1e-12)


def test_fixed_kl_controller_never_moves():
    controller = rl.FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=512)
    assert controller.coef == 0.05
    assert controller.state_dict() == {"coef": 0.05}


@pytest.mark.parametrize("kwargs", [{"init_coef": 0.0}, {"target": -1.0}, {"horizon": 0.0}])
def test_adaptive_kl_controller_rejects_non_positive_settings(kwargs):
    settings = {"init_coef": 0.2, "target": 6.0, "horizon": 10000.0} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        rl.AdaptiveKLController(**settings)


# --- EOS handling ------------------------------------------------------------------------------------------------


def test_first_true_indices():
    bools = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    assert rl.first_true_indices(bools).tolist() == [1, 3, 0]


def test_truncate_after_eos():
    """EOS = 2, PAD = 0. Row 1: EOS at index 1, a second EOS and the token after it become pad (length 2).
    Row 2: no EOS, unchanged (length 4 = T). Row 3: EOS first, everything after it is pad (length 1)."""
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 5, 6, 7]])
    truncated, lengths = rl.truncate_after_eos(responses, eos_id=2, pad_id=0)
    assert truncated.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert lengths.tolist() == [2, 4, 1]
    assert rl.response_mask(lengths, 4).tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
    ]


def test_truncate_after_eos_needs_distinct_pad():
    with pytest.raises(ValueError, match="pad_id"):
        rl.truncate_after_eos(torch.tensor([[1, 2]]), eos_id=2, pad_id=2)


def test_missing_eos_penalty():
    """Scores (1, 0.5), only the first has EOS, penalty 1: subtract -> (1, -0.5); replace -> (1, -1)."""
    scores, has_eos = torch.tensor([1.0, 0.5]), torch.tensor([True, False])
    close(rl.missing_eos_penalty(scores, has_eos, 1.0), [1.0, -0.5])
    close(rl.missing_eos_penalty(scores, has_eos, 1.0, mode="replace"), [1.0, -1.0])
    with pytest.raises(ValueError, match="mode"):
        rl.missing_eos_penalty(scores, has_eos, 1.0, mode="clip")


# --- rewards and GAE ---------------------------------------------------------------------------------------------


def test_per_token_rewards_both_score_conventions():
    """beta = 0.5; row 1 has 2 valid tokens of T = 4, row 2 is full. Padding KL (9.9, NaN) must not leak in.

    KL part: row 1 (-0.05, -0.1, 0, 0); row 2 (-0.25, -0.3, -0.35, -0.4).
    "eos": score 1 at index L-1 = 1 -> (-0.05, 0.9, 0, 0); score 2 at index 3 -> (..., 1.6).
    "after_eos": score 1 at index min(L, T-1) = 2 -> (-0.05, -0.1, 1, 0); row 2 is full, so index 3 again.
    """
    kl = torch.tensor([[0.1, 0.2, 9.9, float("nan")], [0.5, 0.6, 0.7, 0.8]])
    mask = rl.response_mask(torch.tensor([2, 4]), 4)
    scores = torch.tensor([1.0, 2.0])
    full_row = [-0.25, -0.3, -0.35, 1.6]
    close(rl.per_token_rewards(scores, kl, 0.5, mask), [[-0.05, 0.9, 0.0, 0.0], full_row])
    close(rl.per_token_rewards(scores, kl, 0.5, mask, score_index="after_eos"), [[-0.05, -0.1, 1.0, 0.0], full_row])


def test_per_token_rewards_rejects_empty_rows_and_unknown_index():
    with pytest.raises(ValueError, match="mask"):
        rl.per_token_rewards(torch.ones(1), torch.zeros(1, 2), 0.1, torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="score_index"):
        rl.per_token_rewards(torch.ones(1), torch.zeros(1, 2), 0.1, torch.ones(1, 2, dtype=torch.bool), "p2")


REWARDS = torch.tensor([[0.0, 0.0, 1.0]])
VALUES = torch.tensor([[0.5, 0.25, 0.75]])


def test_gae_three_tokens_closed_form():
    """gamma = 1, lambda = 0.95, r = (0, 0, 1), V = (0.5, 0.25, 0.75), no value after the last token.

    delta_2 = r_2 - V_2 = 0.25;  delta_1 = r_1 + V_2 - V_1 = 0.5;  delta_0 = r_0 + V_1 - V_0 = -0.25.
    A_2 = delta_2 = 0.25
    A_1 = delta_1 + 0.95 delta_2 = 0.5 + 0.2375 = 0.7375
    A_0 = delta_0 + 0.95 delta_1 + 0.95^2 delta_2 = -0.25 + 0.475 + 0.225625 = 0.450625
    Returns A + V = (0.950625, 0.9875, 1.0).
    """
    advantages, returns = rl.gae(REWARDS, VALUES, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=0.95)
    close(advantages, [[0.450625, 0.7375, 0.25]])
    close(returns, [[0.950625, 0.9875, 1.0]])


def test_gae_lambda_one_gives_monte_carlo_returns():
    """With gamma = lambda = 1 the deltas telescope: A_t = sum_{k>=t} r_k - V_t, so returns are the reward-to-go
    (1, 1, 1) and A = (0.5, 0.75, 0.25)."""
    advantages, returns = rl.gae(REWARDS, VALUES, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=1.0)
    close(advantages, [[0.5, 0.75, 0.25]])
    close(returns, [[1.0, 1.0, 1.0]])


def test_gae_ignores_positions_after_the_end():
    """The same 3-token episode followed by 2 padded positions holding junk rewards and values: the first 3
    advantages are those of the closed-form test (V_3 must not be bootstrapped), and padding gets 0."""
    rewards = torch.tensor([[0.0, 0.0, 1.0, 3.0, 3.0]])
    values = torch.tensor([[0.5, 0.25, 0.75, 7.0, 7.0]])
    mask = rl.response_mask(torch.tensor([3]), 5)
    advantages, returns = rl.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(advantages, [[0.450625, 0.7375, 0.25, 0.0, 0.0]])
    close(returns, [[0.950625, 0.9875, 1.0, 0.0, 0.0]])


# --- losses ------------------------------------------------------------------------------------------------------


def test_policy_loss_clipping_by_hand():
    """eps = 0.2, old log-probs 0, ratios r = (1.5, 0.5, 1.1, 0.7) and advantages A = (1, 1, -1, -1); a fifth,
    padded token (r = 9, A = 5) must be ignored. Per token, -A*r vs -A*clip(r, 0.8, 1.2):
      r=1.5, A=+1: -1.5 vs -1.2 -> max -1.2, clipped term active
      r=0.5, A=+1: -0.5 vs -0.8 -> max -0.5
      r=1.1, A=-1:  1.1 vs  1.1 -> 1.1 (inside the clip range, not counted)
      r=0.7, A=-1:  0.7 vs  0.8 -> max 0.8, clipped term active
    loss = (-1.2 - 0.5 + 1.1 + 0.8) / 4 = 0.05; clipfrac = 2/4; approxkl = 0.5 * mean((ln r)^2) over 4 tokens.
    d loss / d logp_new = -A*r/4 where the unclipped term is active, else 0: (0, -0.125, 0.275, 0, 0).
    """
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.7, 9.0]])
    logp_new = ratios.log().requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 5.0]])
    mask = rl.response_mask(torch.tensor([4]), 5)
    loss, clipfrac, approxkl = rl.policy_loss(logp_new, torch.zeros(1, 5), advantages, mask, clip_eps=0.2)
    close(loss.detach(), 0.05)
    close(clipfrac, 0.5)
    close(approxkl, 0.5 * sum(math.log(r) ** 2 for r in (1.5, 0.5, 1.1, 0.7)) / 4)
    loss.backward()
    close(logp_new.grad, [[0.0, -0.125, 0.275, 0.0, 0.0]])


def test_value_loss_clipping_both_branches():
    """eps = 0.2, old values 0 (so clip(v) = clip(v, -0.2, 0.2)); a fifth, padded token must be ignored.
      v=0.5,  R=1:    (0.5-1)^2 = 0.25   vs (0.2-1)^2 = 0.64    -> 0.64, clipped branch larger
      v=0.5,  R=-1:   (0.5+1)^2 = 2.25   vs (0.2+1)^2 = 1.44    -> 2.25, unclipped branch larger
      v=-0.1, R=0:    0.01 both (inside the clip range, not counted)
      v=0.3,  R=0.5:  (0.3-0.5)^2 = 0.04 vs (0.2-0.5)^2 = 0.09  -> 0.09, clipped branch larger
    loss = 0.5 * (0.64 + 2.25 + 0.01 + 0.09) / 4 = 0.37375; clipfrac = 2/4.
    """
    values_new = torch.tensor([[0.5, 0.5, -0.1, 0.3, 50.0]])
    returns = torch.tensor([[1.0, -1.0, 0.0, 0.5, -50.0]])
    mask = rl.response_mask(torch.tensor([4]), 5)
    loss, clipfrac = rl.value_loss(values_new, torch.zeros(1, 5), returns, mask, clip_eps=0.2)
    close(loss, 0.37375)
    close(clipfrac, 0.5)
