"""Scoring text with a causal LM, without training: per-token and per-reply log-probs, and the KL of sampled replies
to a reference."""

from __future__ import annotations

from typing import Any

from align import chat, generation
from align.generation import Progress


def token_logprobs(model, rows: list[list[int]], pad_id: int, batch_size: int, starts: list[int],
                   progress: Progress | None = None) -> list[Any]:
    """Per row, the log-probs (temperature 1) of tokens `start + 1 .. L - 1`, each given the tokens before it.

    Only what is asked for is computed: the model's head runs from the batch's smallest `start` on, so a long
    prompt before a short reply costs its forward pass but not its full-vocabulary logits.
    """
    import torch

    from align import rl

    out = []
    with torch.no_grad():
        for begin in range(0, len(rows), batch_size):
            batch, firsts = rows[begin:begin + batch_size], starts[begin:begin + batch_size]
            ids, mask = generation.padded(batch, pad_id, model.device, side="right")
            first = min(firsts)
            positions = torch.arange(first, ids.size(1) - 1, device=ids.device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=positions).logits
            logprobs = rl.logprobs_from_logits(logits, ids[:, first + 1:]).cpu()
            out.extend(row_logprobs[start - first:len(row) - 1 - first]
                       for row, start, row_logprobs in zip(batch, firsts, logprobs, strict=True))
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
    # Log-prob index t scores token t + 1; a row's scores start where its first labelled token is predicted.
    starts = [next((t - 1 for t, label in enumerate(enc["labels"]) if label != chat.IGNORE_INDEX and t > 0),
                   len(enc["input_ids"]) - 1) for enc in encoded]
    logprobs = token_logprobs(model, [enc["input_ids"] for enc in encoded], tokenizer.pad_token_id, batch_size,
                              starts, progress)
    sums, lengths = [], []
    for enc, start, row in zip(encoded, starts, logprobs, strict=True):
        trained = [label != chat.IGNORE_INDEX for label in enc["labels"][start + 1:]]
        sums.append(float(sum(lp for lp, keep in zip(row.tolist(), trained, strict=True) if keep)))
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
    starts = [len(prompt) - 1 for prompt in generated.prompt_ids]  # the last prompt token predicts the first reply token
    policy_lp = token_logprobs(policy, rows, pad_id, batch_size, starts, progress)
    reference_lp = token_logprobs(reference, rows, pad_id, batch_size, starts, progress)
    return [float(rl.kl_estimate(lp, ref_lp, estimator).sum()) for lp, ref_lp in zip(policy_lp, reference_lp)]
