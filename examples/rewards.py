"""Rule-based rewards for the PPO stage: `reward_model.function: examples/rewards.py:<name>`.

Each is called on the decoded texts of one rollout batch as fn(prompts, completions) -> one float per completion
(special tokens removed, the completion without its EOS). Add your own the same way: any importable module
(`package.module:function`) or a file path (`path/to/file.py:function`) works.
"""

from __future__ import annotations

import re


def mentions_paris(prompts: list[str], completions: list[str]) -> list[float]:
    """1 if the completion mentions Paris (any case), else 0."""
    return [1.0 if "paris" in completion.lower() else 0.0 for completion in completions]


def mentions_france(prompts: list[str], completions: list[str]) -> list[float]:
    """1 if the completion says "france" (any case), else 0; a single token for the test suite's tiny tokenizer."""
    return [1.0 if "france" in completion.lower() else 0.0 for completion in completions]


def concise(prompts: list[str], completions: list[str], target_words: int = 30) -> list[float]:
    """1 for a non-empty answer of up to `target_words` words, falling linearly to 0 at twice that; 0 if empty."""
    scores = []
    for completion in completions:
        words = len(completion.split())
        scores.append(0.0 if words == 0 else max(0.0, min(1.0, 2.0 - words / target_words)))
    return scores


def ends_with_sentence(prompts: list[str], completions: list[str]) -> list[float]:
    """1 if the completion ends with a full stop, question or exclamation mark (a finished sentence), else 0."""
    return [1.0 if re.search(r"[.!?][\"')\]]*\s*$", completion) else 0.0 for completion in completions]
