"""Generation helpers shared by PPO's rollouts, `align eval` and the completions sampled while training: token rows
padded into tensors, the neutral GenerationConfig, batched `generate()`, and reply statistics (length, EOS,
repetition).

Generation is left-padded and batched, seeded without disturbing the caller's random state, and never samples the
pad token (which is not the EOS here), so a reply is its tokens up to and including the first EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from align import chat
from align.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

REPEAT_NGRAM = 4
"""A reply counts as repetitive when some run of this many tokens occurs in it twice."""

Progress = Callable[[int], None]
"""Told how many rows a step just finished, e.g. a tqdm bar's `update`."""


@dataclass
class Generated:
    """Replies sampled for N prompts."""

    prompt_ids: list[list[int]]
    """The chat-templated prompt (with the generation prompt) of each row, as token ids."""
    responses: list[list[int]]
    """Each reply's tokens up to and including its EOS, or all max_new_tokens when it has none."""
    has_eos: list[bool]
    texts: list[str]
    """Each reply decoded without special tokens (so without its EOS)."""


def prompt_ids(tokenizer, prompt: list[dict]) -> list[int]:
    """Token ids of a chat prompt rendered with the generation prompt, as the model sees it before replying."""
    text = chat.render(tokenizer, prompt, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def padded(rows: list[list[int]], pad_id: int, device: Any, *,
           side: Literal["left", "right"]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids padded with `pad_id` on `side` to the longest row, and their (B, L) attention mask (from the row
    lengths, not from the pad id). Prompts to generate from are padded on the left, so every reply starts at L."""
    import torch

    width = max(map(len, rows))
    if side == "left":
        ids = [[pad_id] * (width - len(row)) + row for row in rows]
        mask = [[0] * (width - len(row)) + [1] * len(row) for row in rows]
    else:
        ids = [row + [pad_id] * (width - len(row)) for row in rows]
        mask = [[1] * len(row) + [0] * (width - len(row)) for row in rows]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def decode_prompts(tokenizer, queries: torch.Tensor, pad_id: int) -> list[str]:
    """The text of left-padded prompt rows, without pads and special tokens."""
    return tokenizer.batch_decode([row[row != pad_id] for row in queries], skip_special_tokens=True)


def generation_config(tokenizer, max_new_tokens: int, temperature: float, *, top_k: int = 0, top_p: float = 1.0,
                      suppress_pad: bool = True, **extra: Any) -> GenerationConfig:
    """Plain sampling from the model's distribution at `temperature` (0: greedy), cut to `top_k` / `top_p` when set.

    Every other processor is set to its neutral value, whatever the checkpoint's generation_config says (top_k would
    otherwise default to 50; Qwen ships repetition_penalty=1.05), so that the replies come from the distribution the
    log-probs describe. The pad token is suppressed unless `suppress_pad` is false. `extra`: more GenerationConfig
    fields (what `generate` returns).
    """
    from transformers import GenerationConfig

    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p} if temperature > 0 else {
        "do_sample": False}
    return GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=0, typical_p=1.0, repetition_penalty=1.0,
                            no_repeat_ngram_size=0, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id,
                            suppress_tokens=[tokenizer.pad_token_id] if suppress_pad else None, use_cache=True,
                            **sampling, **extra)


def generate(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, batch_size: int = 8, progress: Progress | None = None) -> Generated:
    """Sample one reply per prompt, `batch_size` prompts at a time.

    The same prompts, seed and batch size give the same replies. The global torch random state is saved and
    restored around sampling, so calling this during training does not change the training run.

    Args:
        model: a causal LM (its training/eval mode is restored afterwards).
        tokenizer: its tokenizer; the pad token must differ from the EOS token.
        prompts: chat prompts, each a list of messages ending on a user (or tool) turn.
        max_new_tokens: reply length limit.
        temperature: sampling temperature; 0 decodes greedily.
        top_p: nucleus sampling cut (1: the whole distribution).
        seed: seed for sampling.
        batch_size: prompts per generate call.
        progress: told the number of prompts of each batch done (a progress bar's `update`).
    """
    import torch

    from align import rl

    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ModelError(f"tokenizer pads with {tokenizer.pad_token!r}, its EOS token; sampling needs a pad token "
                         "that is not EOS (align.models.load_tokenizer picks one when the vocabulary has a spare)")
    ids = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    config = generation_config(tokenizer, max_new_tokens, temperature, top_p=top_p)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    responses: list[list[int]] = []
    has_eos: list[bool] = []
    was_training = model.training
    model.eval()
    cuda = [model.device.index or 0] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(ids), batch_size):
                queries, attention = padded(ids[start:start + batch_size], pad, model.device, side="left")
                out = model.generate(input_ids=queries, attention_mask=attention, generation_config=config)
                cut, lengths = rl.truncate_after_eos(out[:, queries.size(1):], eos, pad)
                for row, length in zip(cut.tolist(), lengths.tolist(), strict=True):
                    responses.append(row[:length])
                    has_eos.append(row[length - 1] == eos)
                if progress:
                    progress(len(lengths))
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Generated(prompt_ids=ids, responses=responses, has_eos=has_eos, texts=texts)


def has_repeated_ngram(tokens: list[int], n: int = REPEAT_NGRAM) -> bool:
    """True when some n consecutive tokens occur twice in `tokens` (overlapping occurrences count)."""
    seen = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def reply_tokens(response: list[int], has_eos: bool) -> list[int]:
    """A reply's content tokens: without its closing EOS."""
    return response[:-1] if has_eos else response


def repetition_rate(replies: list[list[int]], eos_id: int) -> float:
    """The fraction of replies (token ids, with or without a closing EOS) that repeat a 4-gram of content tokens."""
    if not replies:
        raise ValueError("no replies to summarise")
    return sum(has_repeated_ngram(reply_tokens(reply, bool(reply) and reply[-1] == eos_id))
               for reply in replies) / len(replies)


def completion_stats(generated: Generated) -> dict[str, float]:
    """Mean reply length in tokens (the EOS included), the fraction of replies that end with EOS, and the fraction
    with a repeated 4-gram of content tokens."""
    n = len(generated.responses)
    if n == 0:
        raise ValueError("no completions to summarise")
    repeated = sum(has_repeated_ngram(reply_tokens(response, eos))
                   for response, eos in zip(generated.responses, generated.has_eos, strict=True))
    return {"length_mean": sum(map(len, generated.responses)) / n, "eos_rate": sum(generated.has_eos) / n,
            "repetition_rate": repeated / n}


def completion_rows(prompts: list[list[dict]], generated: Generated) -> list[dict]:
    """One row per prompt: its last message, the reply text, the reply's length in tokens (EOS included), whether it
    ended with EOS, and whether it repeats a 4-gram."""
    return [
        {"prompt": prompt[-1]["content"], "completion": text, "length": len(response), "eos": eos,
         "repeated_ngram": has_repeated_ngram(reply_tokens(response, eos))}
        for prompt, text, response, eos in zip(prompts, generated.texts, generated.responses, generated.has_eos,
                                               strict=True)
    ]


