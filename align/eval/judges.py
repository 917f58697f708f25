"""The judges `align eval` scores replies with: a reward model (`reward:DIR`) or a reward function as a rule
(`rule:module:function`). Each has `score(prompts, replies) -> one float per reply`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from align import chat, generation, models, reward_functions
from align.errors import ConfigError
from align.generation import Progress
from align.sections import ModelConfig


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
    """Scores replies with a one-label sequence classifier: logits[0] at the reply's EOS (see chat.reward_text).

    With `max_length`, a longer text keeps only its last `max_length` tokens: the reply's end and its EOS, the token
    scored, always stay, and a long multi-turn conversation costs no more than `max_length` tokens. `truncated`
    counts the texts that lost their start.
    """

    def __init__(self, model, tokenizer, batch_size: int, max_length: int | None = None):
        self.model, self.tokenizer, self.batch_size, self.max_length = model, tokenizer, batch_size, max_length
        self.truncated = 0

    @classmethod
    def load(cls, path: str, device: str, batch_size: int, max_length: int | None = None) -> RewardModelJudge:
        cfg = ModelConfig(name_or_path=path)
        tokenizer = models.load_tokenizer(cfg)
        model = models.load_sequence_classifier(cfg, pad_token_id=tokenizer.pad_token_id)
        return cls(model.to(device).eval(), tokenizer, batch_size, max_length)

    def score(self, prompts: list[list[dict]], replies: list[list[dict]], progress: Progress | None = None) -> list[float]:
        import torch

        rows = [self.tokenizer(chat.reward_text(self.tokenizer, prompt, reply), add_special_tokens=False)["input_ids"]
                for prompt, reply in zip(prompts, replies, strict=True)]
        if self.max_length is not None:
            self.truncated += sum(len(ids) > self.max_length for ids in rows)
            rows = [ids[-self.max_length:] for ids in rows]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                ids, mask = generation.padded(rows[start:start + self.batch_size], self.tokenizer.pad_token_id,
                                              self.model.device, side="right")
                scores.extend(self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist())
                if progress:
                    progress(len(ids))
        return scores


class RuleJudge:
    """Scores replies with a rule `fn(prompts, completions) -> one float each`, called as the PPO stage calls it:
    prompts as chat-templated text without special tokens, completions as the reply's text."""

    def __init__(self, fn: reward_functions.RewardFunction, tokenizer, option: str = "--judge"):
        self.fn = fn
        self.tokenizer = tokenizer
        self.option = option  # what an error about a bad return value names
        # prompt (as JSON) -> its text, rendered once: GRPO and RLOO score each prompt num_generations times a step
        self._rendered: dict[str, str] = {}

    def prompt_text(self, prompt: list[dict]) -> str:
        key = json.dumps(prompt, sort_keys=True)
        if key not in self._rendered:
            ids = generation.prompt_ids(self.tokenizer, prompt)
            self._rendered[key] = self.tokenizer.decode(ids, skip_special_tokens=True)
        return self._rendered[key]

    def score(self, prompts: list[list[dict]], replies: list[list[dict]], progress: Progress | None = None) -> list[float]:
        prompt_texts = [self.prompt_text(prompt) for prompt in prompts]
        texts = ["\n".join(message["content"] for message in reply) for reply in replies]
        scores = reward_functions.scores(self.fn, prompt_texts, texts, self.option)
        if progress:
            progress(len(scores))
        return scores


def make_judge(spec: JudgeSpec | None, rule: reward_functions.RewardFunction | None, tokenizer, device: str,
               batch_size: int, max_length: int):
    """The judge a spec names; a rule renders prompts with the policies' (shared) tokenizer."""
    if spec is None:
        return None
    if rule is not None:
        return RuleJudge(rule, tokenizer)
    return RewardModelJudge.load(spec.target, device, batch_size, max_length)
