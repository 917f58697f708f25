"""Two reward heads and a gate between them, written into one standard decoder block (`hh_rlhf_reward_head.py fit
--gate-l2`).

One linear direction cannot prefer the fuller reply to a helpful request and the more careful one to a harmful
request at once. So a helpful head is fitted on the helpful pairs, a harmless head on the harmless-base pairs, and a
gate on the same states learns which source a conversation comes from (its labels come free with the data):

    score(h) = helpful . h + gate(u . h + c) * ((harmless - helpful) . h)

`gate` is `ramp`, a logistic-like step built from two SiLUs, so that the whole score is what one Llama MLP with
biases computes. `write_gate_block` puts it into the block after the reward model's last pretrained block; the
export stays a standard `LlamaForSequenceClassification`, loaded by `align probe`, `align eval --judge reward:DIR`
and PPO's `reward_model` with no custom code.
"""

from __future__ import annotations

import torch
from torch.nn.functional import silu

STEP = 2.5  # ramp's half-width: its slope at 0 (0.24) is the logistic's (0.25), so it stands in for a sigmoid
LINEAR = 30.0  # a unit whose gate is this constant and whose up weights are divided by silu(LINEAR) is linear
# The block adds SCALE * score to one residual dimension and a constant LIFT to another, so the final RMSNorm divides
# by about LIFT / sqrt(hidden) whatever else the residual holds, and the score layer reads the score linearly: the
# residual's own entry in that dimension adds entry / SCALE to it, and the norm shrinks it by a factor
# sqrt(1 + (SCALE * score / LIFT)^2), 1 - 5e-5 at a score of 1 (monotone, so no pair's order changes).
SCALE, LIFT = 1e4, 1e6


def ramp(z: torch.Tensor) -> torch.Tensor:
    """0 far below zero, 1 far above, 0.5 at zero; (silu(z + STEP) - silu(z - STEP)) / (2 STEP)."""
    return (silu(z + STEP) - silu(z - STEP)) / (2 * STEP)


def fit_gate(states: torch.Tensor, harmful: torch.Tensor, l2: float) -> torch.Tensor:
    """Logistic regression, (n, hidden) states -> P(harmless-base); returns (hidden + 1,): weights, then bias."""
    inputs = torch.cat([states, torch.ones(len(states), 1)], 1)
    weight = torch.zeros(inputs.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=300, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = (torch.nn.functional.binary_cross_entropy_with_logits(inputs @ weight, harmful.float())
                 + l2 * weight[:-1].pow(2).sum() / 2)
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach()


def gated_scores(states: torch.Tensor, helpful: torch.Tensor, harmless: torch.Tensor,
                 gate: torch.Tensor) -> torch.Tensor:
    """The score of each state (..., hidden): the helpful head's, moved towards the harmless head's by the gate."""
    opened = ramp(states @ gate[:-1] + gate[-1])
    return states @ helpful + opened * (states @ (harmless - helpful))


def write_gate_block(classifier, helpful: torch.Tensor, harmless: torch.Tensor, gate: torch.Tensor,
                     mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make the classifier's last block and score layer compute `gated_scores` of the standardised state
    `(h - mean) / std`, where h is the final norm of the residual entering that block (the state `extract` keeps).

    The classifier must have biases in its MLPs and its last block's weights all zero: its attention then adds
    nothing, and only three MLP units are used. The helpful head's mean offset is the same for both replies of a pair
    and is dropped, as the plain head's export drops it; the gated part's offset depends on the gate and stays.
    """
    block, norm = classifier.model.layers[-1], classifier.model.norm
    helpful, harmless = helpful / std, harmless / std
    towards = harmless - helpful
    gate_weight, gate_bias = gate[:-1] / std, gate[-1] - gate[:-1] / std @ mean
    # the two residual dimensions with the smallest entries at the reply's EOS (h is the residual times the norm's
    # weight, over a divisor shared by all dimensions) carry the score and the lift
    write, lift = torch.argsort((mean.abs() + std) / norm.weight.abs())[:2].tolist()
    mlp = block.mlp
    with torch.no_grad():
        block.input_layernorm.weight.fill_(1.0)
        block.post_attention_layernorm.weight.copy_(norm.weight)  # the MLP reads exactly the state h
        mlp.gate_proj.bias[0] = LINEAR
        mlp.up_proj.weight[0] = helpful / silu(torch.tensor(LINEAR))
        for unit, sign in ((1, 1.0), (2, -1.0)):
            mlp.gate_proj.weight[unit] = gate_weight
            mlp.gate_proj.bias[unit] = gate_bias + sign * STEP
            mlp.up_proj.weight[unit] = sign * towards / (2 * STEP)
            mlp.up_proj.bias[unit] = -sign * (towards @ mean) / (2 * STEP)
        mlp.down_proj.weight[write, :3] = SCALE
        mlp.down_proj.bias[lift] = LIFT
        classifier.score.weight.zero_()
        classifier.score.weight[0, write] = LIFT / (SCALE * classifier.config.hidden_size ** 0.5) / norm.weight[write]
