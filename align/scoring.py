"""Scoring text with models, without training: per-token and per-reply log-probs, the KL of sampled replies to a
reference, and the judges `align eval` scores replies with (a reward model, or a reward function as a rule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from align import chat, completions, models, reward_functions
from align.errors import ConfigError
from align.sections import ModelConfig

# ---- judges -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeSpec:
    kind: Literal["reward", "rule"]
    target: str
    """The reward model dir, or the rule's module:function."""


def parse_judge(spec: str) -> JudgeSpec:
    """`reward:DIR` or `rule:module:function` -> JudgeSpec; anything else is a ConfigError."""
    kind, sep, target = spec.partition(":")
    if not sep or kind not in ("reward", "rule") or not target:
        raise ConfigError(f"--judge: expected reward:DIR or rule:module:function, got {spec!r}")
    return JudgeSpec(kind, target)


def load_rule(target: str) -> reward_functions.RewardFunction:
    """`module:function` or `path/to/file.py:function` -> the function, checked to exist and be callable."""
    return reward_functions.load(target, f"--judge rule:{target}")


class RewardModelJudge:
    """Scores replies with a one-label sequence classifier: logits[0] at the reply's EOS (see chat.reward_text)."""

    def __init__(self, path: str, device: str, batch_size: int):
        cfg = ModelConfig(name_or_path=path)
        self.tokenizer = models.load_tokenizer(cfg)
        model = models.load_sequence_classifier(cfg, pad_token_id=self.tokenizer.pad_token_id)
        self.model = model.to(device).eval()
        self.batch_size = batch_size

    def score(self, prompts: list[list[dict]], replies: list[list[dict]]) -> list[float]:
        import torch

        rows = [self.tokenizer(chat.reward_text(self.tokenizer, prompt, reply), add_special_tokens=False)["input_ids"]
                for prompt, reply in zip(prompts, replies, strict=True)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                ids, mask = right_padded(rows[start:start + self.batch_size], self.tokenizer.pad_token_id,
                                         self.model.device)
                scores.extend(self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist())
        return scores


class RuleJudge:
    """Scores replies with a rule `fn(prompts, completions) -> one float each`, called as the PPO stage calls it:
    prompts as chat-templated text without special tokens, completions as the reply's text."""

    def __init__(self, fn: reward_functions.RewardFunction, tokenizer):
        self.fn = fn
        self.tokenizer = tokenizer

    def score(self, prompts: list[list[dict]], replies: list[list[dict]]) -> list[float]:
        prompt_texts = [self.tokenizer.decode(completions.prompt_ids(self.tokenizer, prompt), skip_special_tokens=True)
                        for prompt in prompts]
        texts = ["\n".join(message["content"] for message in reply) for reply in replies]
        return reward_functions.scores(self.fn, prompt_texts, texts, "--judge")


def make_judge(spec: JudgeSpec | None, rule: reward_functions.RewardFunction | None, tokenizer, device: str,
               batch_size: int):
    """The judge a spec names; a rule renders prompts with the policies' (shared) tokenizer."""
    if spec is None:
        return None
    if rule is not None:
        return RuleJudge(rule, tokenizer)
    return RewardModelJudge(spec.target, device, batch_size)


# ---- log-probs ----------------------------------------------------------------------------------------------------

def right_padded(rows: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """(B, L) right-padded ids and their (B, L) attention mask (from the row lengths, not from the pad id)."""
    import torch

    width = max(map(len, rows))
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return ids, mask


def token_logprobs(model, rows: list[list[int]], pad_id: int, batch_size: int) -> list[Any]:
    """Per row, the (L - 1,) log-probs of tokens 1..L-1 given the tokens before them (temperature 1)."""
    import torch

    from align import rl

    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            ids, mask = right_padded(batch, pad_id, model.device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logprobs = rl.logprobs_from_logits(logits[:, :-1], ids[:, 1:]).cpu()
            out.extend(row_logprobs[:len(row) - 1] for row, row_logprobs in zip(batch, logprobs))
    return out


def reply_logps(model, tokenizer, prompts: list[list[dict]], replies: list[list[dict]], batch_size: int) -> list[float]:
    """Summed log-probs of each reply's assistant tokens up to and including their EOS, given the prompt: the tokens
    align's SFT labels (TRL's DPO also counts the template's text after the EOS, e.g. ChatML's newline)."""
    encoded = [chat.tokenize_sft_row(tokenizer, {"prompt": prompt, "completion": reply})
               for prompt, reply in zip(prompts, replies, strict=True)]
    logprobs = token_logprobs(model, [enc["input_ids"] for enc in encoded], tokenizer.pad_token_id, batch_size)
    sums = []
    for enc, row in zip(encoded, logprobs):
        trained = [label != chat.IGNORE_INDEX for label in enc["labels"][1:]]
        sums.append(float(sum(lp for lp, keep in zip(row.tolist(), trained) if keep)))
    return sums


def pair_logps(model, tokenizer, pairs: list[dict], batch_size: int) -> tuple[list[float], list[float]]:
    """Summed reply log-probs of the chosen and of the rejected reply of each pair."""
    prompts = [row["prompt"] for row in pairs]
    return (reply_logps(model, tokenizer, prompts, [row["chosen"] for row in pairs], batch_size),
            reply_logps(model, tokenizer, prompts, [row["rejected"] for row in pairs], batch_size))


def kl_per_sample(policy, reference, generated: completions.Generated, pad_id: int, estimator: str,
                  batch_size: int) -> list[float]:
    """Per sampled reply, the sum over its tokens of the per-token KL(policy || reference) estimate."""
    from align import rl

    rows = [prompt + response for prompt, response in zip(generated.prompt_ids, generated.responses, strict=True)]
    policy_lp = token_logprobs(policy, rows, pad_id, batch_size)
    reference_lp = token_logprobs(reference, rows, pad_id, batch_size)
    out = []
    for prompt, lp, ref_lp in zip(generated.prompt_ids, policy_lp, reference_lp):
        reply = slice(len(prompt) - 1, None)  # log-prob index t scores token t + 1
        out.append(float(rl.kl_estimate(lp[reply], ref_lp[reply], estimator).sum()))
    return out
