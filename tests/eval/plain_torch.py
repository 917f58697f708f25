"""What align.eval computes, recomputed here with plain torch and transformers, one unpadded sequence at a time."""

from __future__ import annotations

from pathlib import Path

import tiny

from align import models
from align.sections import ModelConfig

EOS = "<|im_end|>"
PAIRS = [*tiny.PAIRS[:4], tiny.PAIRS[5]]
"""Five (prompt, chosen, rejected) of the tiny vocabulary's pairs."""


def message(role: str, content: str) -> list[dict]:
    return [{"role": role, "content": content}]


def load(path: Path):
    cfg = ModelConfig(name_or_path=str(path))
    return models.load_tokenizer(cfg), models.load_causal_lm(cfg).eval()


def plain_reply_logp(model, tokenizer, prompt: str, reply: str) -> float:
    import torch

    prompt_ids = tokenizer.apply_chat_template(message("user", prompt), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_ids, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1:].sum())


def plain_reward(reward_model, tokenizer, prompt: str, reply: str) -> float:
    import torch

    text = tokenizer.apply_chat_template(message("user", prompt) + message("assistant", reply), tokenize=False)
    text = text[:text.rindex(EOS) + len(EOS)]
    with torch.no_grad():
        return float(reward_model(torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])).logits[0, 0])


def plain_reward_model(path: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path).eval()
