"""Canonical row kinds (TRL's dataset types), their validation, and the projection of any kind to prompt-only.

    sft         {"messages": [...]}  or  {"prompt": [...], "completion": [...]}    (+ optional "tools")
    preference  {"prompt": [...], "chosen": [...], "rejected": [...]}
    kto         {"prompt": [...], "completion": [...], "label": bool}
    prompt      {"prompt": [...]}                                                   (+ optional "tools")
"""

from __future__ import annotations

from collections.abc import Callable

from data_formats.fields import json_type
from data_formats.messages import check_turns
from data_formats.problems import (
    CHOSEN_EQUALS_REJECTED,
    EMPTY_CONTENT,
    EMPTY_FINAL_REPLY,
    EMPTY_PROMPT,
    NO_FINAL_REPLY,
    ROLE_ORDER,
    WRONG_TYPE,
    RowProblem,
)

KINDS = ("sft", "preference", "kto", "prompt")


def check_prompt(prompt: object) -> str:
    """A prompt: valid turns ending on a user (or tool) turn, ready for a generation prompt. Returns its last role."""
    last = check_turns(prompt, "prompt")
    if last is None:
        raise RowProblem(EMPTY_PROMPT, "'prompt' has no messages")
    if last not in ("user", "tool"):
        raise RowProblem(ROLE_ORDER, f"the prompt ends on a {last} turn; it must end on a user (or tool) turn")
    return last


def check_reply(reply: object, field: str, prev: str) -> None:
    """A reply (chosen, rejected, completion): assistant turns (maybe with tool calls) ending on a non-empty answer."""
    if reply == []:
        raise RowProblem(EMPTY_FINAL_REPLY, f"{field!r} has no messages")
    last = check_turns(reply, field, prev, reply=True)
    if last != "assistant":
        raise RowProblem(NO_FINAL_REPLY, f"{field!r} ends on a {last} turn, not an assistant reply")
    for i, msg in enumerate(reply):
        if msg["role"] == "user":
            raise RowProblem(ROLE_ORDER, f"{field}[{i}] is a user turn inside the reply; a reply holds assistant "
                                         "(and tool) turns only")


def check_sft(row: dict) -> None:
    if "messages" in row:
        messages = row["messages"]
        if messages == []:
            raise RowProblem(EMPTY_CONTENT, "'messages' is empty")
        last = check_turns(messages, "messages", reply=True)
        if last != "assistant":
            raise RowProblem(NO_FINAL_REPLY, f"the conversation ends on a {last} turn; sft needs a final assistant "
                                             "reply")
        return
    check_reply(row["completion"], "completion", check_prompt(row["prompt"]))


def check_preference(row: dict) -> None:
    # Checked first: an identical pair carries no preference signal, whatever else is wrong with it.
    if row["chosen"] == row["rejected"]:
        raise RowProblem(CHOSEN_EQUALS_REJECTED, "chosen and rejected are identical")
    last = check_prompt(row["prompt"])
    check_reply(row["chosen"], "chosen", last)
    check_reply(row["rejected"], "rejected", last)


def check_kto(row: dict) -> None:
    if type(row["label"]) is not bool:
        raise RowProblem(WRONG_TYPE, f"'label' must be true or false, got {json_type(row['label'])}")
    check_reply(row["completion"], "completion", check_prompt(row["prompt"]))


def check_prompt_row(row: dict) -> None:
    check_prompt(row["prompt"])


VALIDATORS: dict[str, Callable[[dict], None]] = {
    "sft": check_sft,
    "preference": check_preference,
    "kto": check_kto,
    "prompt": check_prompt_row,
}


def to_prompt(row: dict) -> dict:
    """The prompt-only row of any canonical row: its prompt, or an sft conversation minus its final assistant turn."""
    if "prompt" in row:
        prompt = row["prompt"]
    else:
        messages = row["messages"]
        ends_on_reply = (type(messages) is list and bool(messages) and type(messages[-1]) is dict
                         and messages[-1].get("role") == "assistant")
        prompt = messages[:-1] if ends_on_reply else messages
    out = {"prompt": prompt}
    if "tools" in row:
        out["tools"] = row["tools"]
    return out
