"""Sample replies to chat prompts and record them: `completions.jsonl`, a W&B table, and length / EOS / repetition
statistics. Used during training (`completions_callback`) and by `align eval`.

Generation is left-padded and batched, seeded without disturbing the caller's random state, and never samples the
pad token (which is not the EOS here), so a reply is its tokens up to and including the first EOS.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align import chat
from align.errors import ModelError

log = logging.getLogger(__name__)

COMPLETIONS_FILE = "completions.jsonl"
REPEAT_NGRAM = 4
"""A reply counts as repetitive when some run of this many tokens occurs in it twice."""


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


def generation_config(tokenizer, max_new_tokens: int, temperature: float):
    """Plain sampling from the model's distribution at `temperature` (0: greedy).

    Every other processor is set to its neutral value, whatever the checkpoint's generation_config says (top_k
    would otherwise default to 50), and the pad token is suppressed.
    """
    from transformers import GenerationConfig

    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {
        "do_sample": False}
    return GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=0, typical_p=1.0, repetition_penalty=1.0,
                            no_repeat_ngram_size=0, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, suppress_tokens=[tokenizer.pad_token_id],
                            use_cache=True, **sampling)


def generate(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, batch_size: int = 8) -> Generated:
    """Sample one reply per prompt, `batch_size` prompts at a time.

    The same prompts, seed and batch size give the same replies. The global torch random state is saved and
    restored around sampling, so calling this during training does not change the training run.

    Args:
        model: a causal LM (its training/eval mode is restored afterwards).
        tokenizer: its tokenizer; the pad token must differ from the EOS token.
        prompts: chat prompts, each a list of messages ending on a user (or tool) turn.
        max_new_tokens: reply length limit.
        temperature: sampling temperature; 0 decodes greedily.
        seed: seed for sampling.
        batch_size: prompts per generate call.
    """
    import torch

    from align import rl

    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ModelError(f"tokenizer pads with {tokenizer.pad_token!r}, its EOS token; sampling needs a pad token "
                         "that is not EOS (align.models.load_tokenizer picks one when the vocabulary has a spare)")
    ids = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    config = generation_config(tokenizer, max_new_tokens, temperature)
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
                rows = ids[start:start + batch_size]
                width = max(map(len, rows))
                queries = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=model.device)
                attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows],
                                         device=model.device)
                out = model.generate(input_ids=queries, attention_mask=attention, generation_config=config)
                cut, lengths = rl.truncate_after_eos(out[:, width:], eos, pad)
                for row, length in zip(cut.tolist(), lengths.tolist(), strict=True):
                    responses.append(row[:length])
                    has_eos.append(row[length - 1] == eos)
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


def sample_completions(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, *,
                       temperature: float = 0.0, seed: int = 0, batch_size: int = 8) -> list[dict]:
    """`completion_rows` of freshly sampled replies; arguments as in `generate`."""
    generated = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                         seed=seed, batch_size=batch_size)
    return completion_rows(prompts, generated)


def write_completions(output_dir: str | Path, step: int, rows: list[dict], tracker: Any = None) -> Path:
    """Append the rows, each with its step, to `<output_dir>/completions.jsonl`; with a W&B run on the tracker,
    also log them as a `wandb.Table` under the key "completions" (one table per call: W&B's step slider browses
    them)."""
    path = Path(output_dir) / COMPLETIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
    run = getattr(tracker, "run", None)
    if run is not None:
        import wandb

        columns = ["step", *rows[0]] if rows else ["step"]
        table = wandb.Table(columns=columns, data=[[step, *row.values()] for row in rows])
        run.log({"completions": table}, step=step)
    return path


def completions_callback(prompts: list[list[dict]], every_n_steps: int, *, tokenizer, tracker: Any,
                         max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0, batch_size: int = 8,
                         health: Any = None):
    """A transformers TrainerCallback that samples replies to `prompts` before training and every N optimizer steps.

    On the main process only: it writes `completions.jsonl` in the tracker's output dir (plus the W&B table) and
    logs `completions/length_mean`, `completions/eos_rate` and `completions/repetition_rate` to the tracker, and
    passes them to `health` (a `HealthReporter`, e.g. the health callback) when given, so their rules see them.
    Sampling uses the unwrapped model, so it suits single-process and DDP runs, not sharded (FSDP / ZeRO-3) weights.
    """
    from transformers import TrainerCallback

    if every_n_steps < 1:
        raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
    if not prompts:
        raise ValueError("completions_callback needs at least one prompt")

    class CompletionsCallback(TrainerCallback):
        def _sample(self, state, model) -> None:
            generated = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                 seed=seed, batch_size=batch_size)
            rows = completion_rows(prompts, generated)
            write_completions(tracker.output_dir, state.global_step, rows, tracker)
            stats = {f"completions/{name}": value for name, value in completion_stats(generated).items()}
            tracker.log(stats, step=state.global_step)
            if health is not None:
                health.observe(state.global_step, stats)
            log.info("step %d: sampled %d completions (mean length %.1f tokens, EOS rate %.2f)", state.global_step,
                     len(rows), stats["completions/length_mean"], stats["completions/eos_rate"])

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                self._sample(state, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and state.global_step % every_n_steps == 0:
                self._sample(state, model)

    return CompletionsCallback()
