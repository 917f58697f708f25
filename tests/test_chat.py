"""Assistant-only labels: exactly the assistant tokens plus EOS, on any prefix-preserving template."""

from __future__ import annotations

import pytest
from tiny import build_tiny_tokenizer

from align import chat
from align.errors import ConfigError

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "what is the capital of france?"},
    {"role": "assistant", "content": "paris"},
    {"role": "user", "content": "and the dog?"},
    {"role": "assistant", "content": "the dog sat on the mat"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def labelled_text(tokenizer, enc):
    return tokenizer.decode([t for t, label in zip(enc["input_ids"], enc["labels"]) if label != chat.IGNORE_INDEX])


def test_labels_cover_exactly_assistant_tokens_and_eos(tokenizer):
    enc = chat.tokenize_messages(tokenizer, CONVERSATION)
    assert labelled_text(tokenizer, enc) == "paris<|im_end|>the dog sat on the mat<|im_end|>"
    # Labelled positions are exactly the tokens of the two replies: compare against tokenizing them alone.
    eos = tokenizer.eos_token_id
    expected = tokenizer("paris")["input_ids"] + [eos] + tokenizer("the dog sat on the mat")["input_ids"] + [eos]
    assert [t for t, label in zip(enc["input_ids"], enc["labels"]) if label != -100] == expected
    assert sum(label == eos for label in enc["labels"]) == 2
    # Everything else, including the user turns and the newline after each EOS, is masked.
    assert enc["labels"][-1] == chat.IGNORE_INDEX


def test_all_tokens_when_not_assistant_only(tokenizer):
    enc = chat.tokenize_messages(tokenizer, CONVERSATION, assistant_only=False)
    assert enc["labels"] == enc["input_ids"]


def test_prompt_completion_trains_only_the_completion(tokenizer):
    row = {"prompt": CONVERSATION[:4], "completion": CONVERSATION[4:]}
    assert labelled_text(tokenizer, chat.tokenize_sft_row(tokenizer, row)) == "the dog sat on the mat<|im_end|>"


def test_template_without_eos_in_assistant_turn_is_refused(tokenizer):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(ConfigError, match="does not end with the EOS token"):
        chat.tokenize_messages(tokenizer, CONVERSATION)


def test_non_prefix_preserving_template_is_refused(tokenizer):
    tokenizer = build_tiny_tokenizer()
    # Renders only the last message: earlier turns are not reproduced, so spans cannot be located.
    tokenizer.chat_template = (
        "{{ messages[-1]['content'] + '<|im_end|>' }}{% if add_generation_prompt %}x{% endif %}"
    )
    with pytest.raises(ConfigError, match="not prefix-preserving"):
        chat.tokenize_messages(tokenizer, CONVERSATION)
