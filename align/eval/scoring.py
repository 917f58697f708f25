"""Scoring text with a causal LM, without training: per-token and per-reply log-probs, and the KL of sampled replies
to a reference."""

from __future__ import annotations

from typing import Any

from align import chat, generation
from align.generation import Progress


def token_logprobs(model, rows: list[list[int]], pad_id: int, batch_size: int,
                   progress: Progress | None = None) -> list[Any]:
    """Per row, the (L - 1,) log-probs of tokens 1..L-1 given the tokens before them (temperature 1)."""
    import torch

    from align import rl

    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            ids, mask = generation.padded(batch, pad_id, model.device, side="right")
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logprobs = rl.logprobs_from_logits(logits[:, :-1], ids[:, 1:]).cpu()
            out.extend(row_logprobs[:len(row) - 1] for row, row_logprobs in zip(batch, logprobs))
            if progress:
                progress(len(batch))
    return out


def reply_logps(model, tokenizer, prompts: list[list[dict]], replies: list[list[dict]], batch_size: int,
                progress: Progress | None = None) -> list[float]:
    """Summed log-probs of each reply's assistant tokens up to and including their EOS, given the prompt: the tokens
    align's SFT labels (TRL's DPO also counts the template's text after the EOS, e.g. ChatML's newline)."""
    return reply_logps_and_lengths(model, tokenizer, prompts, replies, batch_size, progress)[0]


def reply_logps_and_lengths(model, tokenizer, prompts: list[list[dict]], replies: list[list[dict]],
                            batch_size: int, progress: Progress | None = None) -> tuple[list[float], list[int]]:
    """`reply_logps`, and how many tokens each sum covers (for per-token averages)."""
    encoded = [chat.tokenize_sft_row(tokenizer, {"prompt": prompt, "completion": reply})
               for prompt, reply in zip(prompts, replies, strict=True)]
    logprobs = token_logprobs(model, [enc["input_ids"] for enc in encoded], tokenizer.pad_token_id, batch_size,
                              progress)
    sums, lengths = [], []
    for enc, row in zip(encoded, logprobs):
        trained = [label != chat.IGNORE_INDEX for label in enc["labels"][1:]]
        sums.append(float(sum(lp for lp, keep in zip(row.tolist(), trained) if keep)))
        lengths.append(sum(trained))
    return sums, lengths


def pair_logps(model, tokenizer, pairs: list[dict], batch_size: int,
               progress: Progress | None = None) -> tuple[list[float], list[float]]:
    """Summed reply log-probs of the chosen and of the rejected reply of each pair."""
    prompts = [row["prompt"] for row in pairs]
    return (reply_logps(model, tokenizer, prompts, [row["chosen"] for row in pairs], batch_size, progress),
            reply_logps(model, tokenizer, prompts, [row["rejected"] for row in pairs], batch_size, progress))


def kl_per_sample(policy, reference, generated: generation.Generated, pad_id: int, estimator: str,
                  batch_size: int, progress: Progress | None = None) -> list[float]:
    """Per sampled reply, the sum over its tokens of the per-token KL(policy || reference) estimate; `progress` counts
    each reply twice (policy pass, reference pass)."""
    from align import rl

    rows = [prompt + response for prompt, response in zip(generated.prompt_ids, generated.responses, strict=True)]
    policy_lp = token_logprobs(policy, rows, pad_id, batch_size, progress)
    reference_lp = token_logprobs(reference, rows, pad_id, batch_size, progress)
    out = []
    for prompt, lp, ref_lp in zip(generated.prompt_ids, policy_lp, reference_lp):
        reply = slice(len(prompt) - 1, None)  # log-prob index t scores token t + 1
        out.append(float(rl.kl_estimate(lp[reply], ref_lp[reply], estimator).sum()))
    return out
