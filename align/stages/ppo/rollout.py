"""PPO experience: prompt batches in; sampled responses, their log-probs under the policy and the reference, values
and scores out. Generation and forward passes only; every equation is in `align.rl`, the loop in `loop.py`.

Sequences are `[left-padded prompt | response]`. Pad ids are masked out of attention and positions wherever they
occur (TRL 1.12's convention), so the pad token must be one that real text never contains.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from align import chat, data, generation, reward_functions, rl
from align.stages.ppo.config import PPOSection


class PromptStream:
    """Endless global batches of tokenized prompts, reshuffled every pass; each process keeps its slice.

    Resumable: the state is the shuffling generator's state when the current pass began plus the batches taken
    since, so a restored stream yields exactly the batches the original would have.
    """

    def __init__(self, prompts: list[list[int]], batch_size: int, *, rank: int, world: int,
                 generator: torch.Generator | None):
        # generator=None shuffles with the global torch generator, as TRL's DataLoader does (trl_parity only).
        self.loader = DataLoader(prompts, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=list,
                                 generator=generator)
        self._rng = generator if generator is not None else torch.default_generator
        self.local = batch_size // world
        self.rank = rank
        self.passes = 0
        self.taken = 0
        self._pass_start: torch.Tensor | None = None
        self._iter = None

    def next(self) -> list[list[int]]:
        """This process's rows of the next global batch."""
        while True:
            if self._iter is None:
                self._pass_start = self._rng.get_state()
                self._iter, self.taken = iter(self.loader), 0
            batch = next(self._iter, None)
            if batch is not None:
                break
            self._iter, self.passes = None, self.passes + 1
        self.taken += 1
        return batch[self.rank * self.local:(self.rank + 1) * self.local]

    def state_dict(self) -> dict[str, Any]:
        return {"pass_start": self._pass_start, "taken": self.taken, "passes": self.passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replay the current pass's shuffle and skip the batches already taken (cheap: nothing is tokenized)."""
        # Kept as the pass start too: the next checkpoint within this pass stores it again.
        self._pass_start = state["pass_start"]
        self._rng.set_state(self._pass_start)
        self._iter, self.passes = iter(self.loader), state["passes"]
        for _ in range(state["taken"]):
            next(self._iter)
        self.taken = state["taken"]


def tokenize_prompts(tokenizer, rows: list[dict], limit: int, drop_long: bool, dropped: Counter) -> list[list[int]]:
    """Chat-template each prompt row with the generation prompt. A prompt over `limit` tokens keeps its last ones
    (the end holds the generation prompt), or with `drop_long` is dropped and counted in `dropped`."""

    def token_ids(row: dict) -> data.Encoding:
        text = chat.render(tokenizer, row["prompt"], tools=row.get("tools"), add_generation_prompt=True)
        return {"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"]}

    fitted = data.fit_to_length(rows, token_ids, data.LengthLimit(limit, drop_long, keep="end",
                                                                  too_long=f"prompt over {limit} tokens"),
                                dropped=dropped, split="train")
    return [ids["input_ids"] for _, ids in fitted]


def masked_inputs(ids: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """Forward-pass inputs in which every pad id, wherever it is, gets no attention and no position."""
    mask = ids != pad_id
    return {"input_ids": ids, "attention_mask": mask, "position_ids": mask.cumsum(1) - mask.long()}


def tempered(logits: torch.Tensor, temperature: float, suppressed_id: int | None) -> torch.Tensor:
    """The policy's sampling distribution as logits: `logits / temperature`, with the suppressed token (the pad)
    at the dtype's lowest value, i.e. probability 0 without the NaN that -inf gives in the entropy."""
    logits = logits / temperature
    if suppressed_id is not None:
        logits[..., suppressed_id] = torch.finfo(logits.dtype).min
    return logits


def token_scores(model, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, L) per-token output of a one-label sequence classifier: its backbone, then its `score` head on every
    position (transformers' own forward keeps only the last non-pad token)."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(**masked_inputs(ids, pad_id), use_cache=False).last_hidden_state
    return model.score(hidden).squeeze(-1)


def response_positions(ids: torch.Tensor, context: int) -> int:
    """How many final positions' logits a `[prompt | response]` row needs: the last prompt token's, which predicts
    the first response token, and every response token's (the very last one's is dropped after). The language-model
    head then runs on these rows only: the full vocabulary at every prompt position was a pass's largest tensor.
    The logits kept equal a full pass's bit for bit; their gradient differs in the last bits (fewer rows summed)."""
    return ids.size(1) - context + 1


class PolicyAndValue(torch.nn.Module):
    """Policy and value model as one module, so one DDP wrapper syncs both and one optimizer steps both.
    `full_logits` runs the language-model head at every position, as TRL 1.12 does (ppo.trl_parity): its weight
    gradient then sums the same rows in the same order."""

    def __init__(self, policy, value_model, full_logits: bool = False):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.full_logits = full_logits

    def forward(self, ids: torch.Tensor, context: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Response-aligned (B, T, V) policy logits and (B, T) values for `[prompt | response]` rows."""
        keep = response_positions(ids, context)
        logits = self.policy(**masked_inputs(ids, pad_id), use_cache=False,
                             logits_to_keep=0 if self.full_logits else keep).logits[:, -keep:-1]  # 0: every position
        values = token_scores(self.value_model, ids, pad_id)[:, context - 1:-1]
        return logits, values


@dataclass
class Experience:
    """One rollout batch on this process. B rows, prompt width P, response width T."""

    queries: torch.Tensor
    """(B, P) left-padded prompts."""
    responses: torch.Tensor
    """(B, T) responses, pad after the EOS (and after a sampled pad, which only trl_parity allows)."""
    lengths: torch.Tensor
    """(B,) valid response tokens: up to and including the EOS, or up to the first pad."""
    has_eos: torch.Tensor
    """(B,) bool: the response ended with EOS rather than at the length limit."""
    logprobs: torch.Tensor
    """(B, T) log-probs of the sampled tokens under the (tempered) policy that sampled them."""
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    """(B, T) value of the state before each response token."""
    scores: torch.Tensor
    """(B,) reward-model score at the last valid token, or the reward function's value."""

    @property
    def sequences(self) -> torch.Tensor:
        return torch.cat((self.queries, self.responses), 1)


@dataclass
class Sampler:
    """Everything `rollout` needs besides the models: the generation config and the tokens it treats specially."""

    generation_config: Any
    temperature: float
    """The temperature used in every log-prob pass (TRL adds 1e-7 to it; see PPOSection.trl_parity)."""
    eos_id: int
    pad_id: int
    suppressed_id: int | None
    """The pad id, whose logit is never sampled; None under trl_parity (TRL samples it)."""
    chunk: int
    """Rows per forward pass when scoring the rollout."""

    @classmethod
    def create(cls, ppo_cfg: PPOSection, tokenizer) -> Sampler:
        suppressed = None if ppo_cfg.trl_parity else tokenizer.pad_token_id
        temperature = ppo_cfg.temperature + 1e-7 if ppo_cfg.trl_parity else ppo_cfg.temperature
        # The neutral config: the log-probs must be those of the distribution actually sampled.
        config = generation.generation_config(
            tokenizer, ppo_cfg.response_length, temperature, top_k=ppo_cfg.top_k, top_p=ppo_cfg.top_p,
            suppress_pad=suppressed is not None, return_dict_in_generate=True, output_logits=True)
        return cls(config, temperature, tokenizer.eos_token_id, tokenizer.pad_token_id, suppressed, ppo_cfg.micro_batch)


def rollout(sampler: Sampler, policy, reference, value_model, reward, tokenizer,
            queries: torch.Tensor) -> tuple[Experience, dict[str, float]]:
    """Sample one response per prompt with KV-cached `generate`, then score it. Returns the experience and the
    seconds spent generating and scoring. `reference=None` means the LoRA policy with its adapters disabled;
    `reward` is a reward model or a reward function."""
    started = time.perf_counter()
    context, pad = queries.size(1), sampler.pad_id
    out = policy.generate(input_ids=queries, attention_mask=queries != pad, generation_config=sampler.generation_config)
    generated = out.sequences[:, context:]
    # generate() returns the raw logits it sampled from; log-probs under the same tempered distribution come free,
    # without a second forward pass (KV-cached logits differ from a full pass only in the last float bits).
    logprobs = rl.logprobs_from_logits(tempered(torch.stack(out.logits, 1), sampler.temperature,
                                                sampler.suppressed_id), generated)
    del out
    generation_s = time.perf_counter() - started

    responses, _ = rl.truncate_after_eos(generated, sampler.eos_id, pad)
    lengths = rl.first_true_indices(responses == pad)  # a pad ends the response: after EOS, or sampled (parity)
    has_eos = (responses == sampler.eos_id).any(-1)
    sequences = torch.cat((queries, responses), 1)
    from_model = isinstance(reward, torch.nn.Module)
    ref_logprobs, values, last_scores = [], [], []
    for rows in torch.arange(len(queries), device=queries.device).split(sampler.chunk):
        ids = sequences[rows]
        ref_logprobs.append(_reference_logprobs(sampler, policy, reference, ids, responses[rows], context))
        values.append(token_scores(value_model, ids, pad)[:, context - 1:-1])
        if from_model:
            last = context + lengths[rows] - 1  # the EOS, else the last token
            last_scores.append(token_scores(reward, ids, pad)[torch.arange(len(rows)), last])
    if from_model:
        scores = torch.cat(last_scores)
    else:
        scores = _call_reward_function(reward, tokenizer, queries, responses, pad)
    experience = Experience(queries=queries, responses=responses, lengths=lengths, has_eos=has_eos,
                            logprobs=logprobs, ref_logprobs=torch.cat(ref_logprobs), values=torch.cat(values),
                            scores=scores.float())
    return experience, {"generation": generation_s, "experience": time.perf_counter() - started - generation_s}


def _reference_logprobs(sampler: Sampler, policy, reference, ids, responses, context) -> torch.Tensor:
    inputs = {**masked_inputs(ids, sampler.pad_id), "use_cache": False,
              "logits_to_keep": response_positions(ids, context)}
    if reference is None:
        with policy.disable_adapter():
            logits = policy(**inputs).logits
    else:
        logits = reference(**inputs).logits
    logits = tempered(logits[:, :-1], sampler.temperature, sampler.suppressed_id)
    return rl.logprobs_from_logits(logits, responses)


def _call_reward_function(fn: reward_functions.RewardFunction, tokenizer, queries, responses,
                          pad_id) -> torch.Tensor:
    prompts = generation.decode_prompts(tokenizer, queries, pad_id)
    completions = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return torch.tensor(reward_functions.scores(fn, prompts, completions, "reward_model.function"),
                        device=queries.device)
