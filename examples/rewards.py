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


# Words that say what to do rather than what about: sharing one of them with the question is not staying on topic.
_NOT_TOPIC = {"about", "above", "after", "again", "also", "answer", "because", "been", "before", "being", "below",
              "between", "both", "could", "describe", "does", "doing", "down", "during", "each", "explain",
              "following", "from", "give", "have", "having", "here", "into", "itself", "just", "make", "more",
              "most", "once", "only", "other", "over", "provide", "same", "should", "some", "such", "than", "that",
              "their", "them", "then", "there", "these", "they", "this", "those", "through", "under", "until",
              "very", "what", "when", "where", "which", "while", "will", "with", "would", "write", "your", "yours",
              "create", "generate", "list", "name", "sentence", "paragraph", "words", "word", "text", "given",
              "example", "examples", "using", "tell", "find"}


def _question(prompt: str) -> str:
    """The last user message of a chat-templated prompt with its special tokens removed ("...user\\nQ\\nassistant\\n")."""
    _, sep, rest = prompt.rpartition("user\n")
    question = rest if sep else prompt
    return question.rsplit("assistant", 1)[0] if "assistant" in question else question


def _content_words(text: str) -> set[str]:
    """Content words cut to their first 5 letters, so "crepe" and "crepes" count as the same word."""
    return {w[:5] for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in _NOT_TOPIC}


def on_topic(prompts: list[str], completions: list[str]) -> list[float]:
    """1 if the reply uses at least one content word (4+ letters, not an instruction word) of the user's last message.

    A plain check that a short reply still answers the question rather than saying anything short."""
    return [1.0 if _content_words(_question(prompt)) & _content_words(completion) else 0.0
            for prompt, completion in zip(prompts, completions)]


def brief_on_topic(prompts: list[str], completions: list[str], target_words: int = 30, min_words: int = 3) -> list[float]:
    """concise (full marks up to `target_words` words, 0 at twice that) times on_topic; 0 under `min_words` words.

    The word budget alone is won by "OK."; the topic and minimum-length terms close that shortcut."""
    budget = concise(prompts, completions, target_words)
    topic = on_topic(prompts, completions)
    return [0.0 if len(c.split()) < min_words else b * t for c, b, t in zip(completions, budget, topic)]
