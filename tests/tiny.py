"""Tiny test models and data: a BPE tokenizer with a ChatML template, Llama configs, conversations, preference pairs.

Everything is built locally and saved with `save_pretrained` by the fixtures in conftest.py, so stages load it by
path exactly as in production. torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import json
from pathlib import Path

# ChatML, like SmolLM2-135M-Instruct's own template: no {% generation %} markers, which is the hard case
# for assistant-only loss masking.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "the cat sat on the mat and looked at the dog",
    "a helpful assistant answers the question with care",
    "what is the capital of france? paris is the capital of france",
    "write a short poem about the sea and the sky",
    "the quick brown fox jumps over the lazy dog",
    "user assistant system hello thanks goodbye yes no maybe",
    "one two three four five six seven eight nine ten",
    "good answer bad answer chosen rejected prompt reply",
]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>", unk_token="<unk>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    cfg = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return LlamaConfig(**cfg)


CONVERSATIONS = [
    [("what is the capital of france?", "paris"), ("and the dog?", "the dog sat on the mat")],
    [("one two three", "four five six seven")],
    [("hello", "hello, how can i help?")],
    [("write a short poem about the sea", "the sea and the sky, the quick brown fox")],
    [("yes or no?", "maybe")],
]


def messages(turns):
    out = []
    for user, assistant in turns:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


# SFT conversations: the stage tests train on the first 6 and hold out the last 2.
CHATS = [
    [("what is the capital of france?", "paris is the capital of france")],
    [("write a short poem about the sea", "the sea and the sky"), ("thanks", "goodbye")],
    [("hello", "hello, how can i help?")],
    [("one two three", "four five six")],
    [("the quick brown fox", "jumps over the lazy dog")],
    [("is the cat on the mat?", "yes the cat sat on the mat")],
    [("good answer or bad answer?", "a good answer")],
    [("say seven", "seven"), ("say eight", "eight")],
]


def write_chats(path: Path, chats) -> Path:
    path.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in chats))
    return path


# (prompt, chosen, rejected)
PAIRS = [
    ("what is the capital of france?", "paris is the capital of france", "the cat sat on the mat"),
    ("write a short poem about the sea", "the sea and the sky", "no"),
    ("hello", "hello, how can i help?", "goodbye"),
    ("one two three", "four five six", "the lazy dog"),
    ("the quick brown fox", "jumps over the lazy dog", "maybe"),
    ("is the cat on the mat?", "yes the cat sat on the mat", "no answer"),
    ("good answer or bad answer?", "a good answer", "a bad answer"),
    ("say seven", "seven", "ten"),
    ("say eight", "eight", "one"),
    ("what is the capital of france?", "paris", "a dog"),
    ("write a poem", "the sky and the sea", "bad"),
    ("thanks", "you are welcome, goodbye", "what?"),
]


def write_pairs(path: Path, pairs) -> Path:
    with path.open("w") as f:
        for prompt, chosen, rejected in pairs:
            f.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")
    return path


# Pairs a tiny model can separate: the replies differ in one token, "good" in every chosen one and "bad" in every
# rejected one, so a preference stage that learns anything moves its implicit reward margin up, held-out prompts
# included (the kto, orpo and simpo learning tests: train on the first 8, evaluate on the last 4).
SEPARABLE_PAIRS = [(prompt, "a good answer", "a bad answer") for prompt, _, _ in PAIRS]


def write_unpaired(path: Path, rows) -> Path:
    """(prompt, completion, label) rows in TRL's unpaired format (text prompt and completion, boolean label)."""
    path.write_text("".join(json.dumps({"prompt": prompt, "completion": completion, "label": label}) + "\n"
                            for prompt, completion, label in rows))
    return path
