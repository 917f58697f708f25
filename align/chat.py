"""Render conversations with the tokenizer's chat template and label exactly the assistant tokens plus EOS.

Many templates (SmolLM2's ChatML among them) have no `{% generation %}` markers, and TRL only patches the
families it knows. We find each assistant turn by rendering the conversation up to it: the text the turn adds
beyond `render(messages[:i], add_generation_prompt=True)` is the reply, cut after its end-of-turn (EOS) token.
That works with any prefix-preserving template; a template that is not prefix-preserving is reported, never
silently trained on every token.
"""

from __future__ import annotations

from typing import Any

from align.errors import ConfigError

IGNORE_INDEX = -100


def render(tokenizer, messages: list[dict], *, tools: list | None = None, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], *, tools: list | None = None,
                    train_from: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of assistant turns at index >= train_from, each ending at EOS."""
    text = render(tokenizer, messages, tools=tools)
    eos = tokenizer.eos_token
    spans = []
    for i in range(train_from, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], tools=tools, add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1], tools=tools)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise ConfigError(
                "model.chat_template: the chat template is not prefix-preserving (rendering a conversation up to "
                "an assistant turn does not start the full rendering), so assistant tokens cannot be located. "
                "Set model.chat_template to a template that renders earlier turns identically, or set "
                "assistant_only_loss=false to train on every token."
            )
        end = upto.rfind(eos, len(before), len(upto)) if eos else -1
        if end == -1:
            raise ConfigError(
                f"model.chat_template: the assistant turn does not end with the EOS token {eos!r}, so the model "
                "would never learn to stop. Use a template that closes assistant turns with the EOS token, or "
                "set the tokenizer's eos_token to the template's end-of-turn token."
            )
        spans.append((len(before), end + len(eos)))
    return text, spans


def tokenize_messages(tokenizer, messages: list[dict], *, tools: list | None = None, train_from: int = 0,
                      assistant_only: bool = True) -> dict[str, Any]:
    """`input_ids` and `labels` (-100 outside the trained assistant turns) for one conversation."""
    text, spans = assistant_spans(tokenizer, messages, tools=tools, train_from=train_from)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = enc["input_ids"]
    if not assistant_only:
        return {"input_ids": input_ids, "labels": list(input_ids)}
    labels = [IGNORE_INDEX] * len(input_ids)
    span_iter = iter(spans)
    span = next(span_iter, None)
    for t, (start, _end) in enumerate(enc["offset_mapping"]):
        while span is not None and start >= span[1]:
            span = next(span_iter, None)
        if span is None:
            break
        if start >= span[0]:
            labels[t] = input_ids[t]
    return {"input_ids": input_ids, "labels": labels}


def tokenize_sft_row(tokenizer, row: dict, *, assistant_only: bool = True) -> dict[str, Any]:
    """A canonical SFT row (`messages`, or conversational `prompt` + `completion`) -> input_ids and labels."""
    if "messages" in row:
        return tokenize_messages(tokenizer, row["messages"], tools=row.get("tools"), assistant_only=assistant_only)
    prompt = row["prompt"]
    return tokenize_messages(tokenizer, prompt + row["completion"], tools=row.get("tools"),
                             train_from=len(prompt), assistant_only=assistant_only)


def reward_text(tokenizer, prompt: list[dict], reply: list[dict], *, tools: list | None = None) -> str:
    """The text a reward model scores: `prompt + reply` rendered with the chat template, cut right after the reply's
    final EOS token. Whatever the template adds after that EOS (ChatML's newline) is left out, so the classifier's
    last token, the one it scores, is the EOS (the reward stage trains on the same cut).
    """
    text, spans = assistant_spans(tokenizer, prompt + reply, tools=tools, train_from=len(prompt))
    if not spans:
        raise ConfigError("a reply to score must contain an assistant turn; got roles "
                          f"{[m['role'] for m in reply]}")
    return text[: spans[-1][1]]
