"""TRL preference rows: `chosen`/`rejected` as text or messages, with an explicit `prompt` or an implicit one.

Explicit (a `prompt` of the same style as chosen/rejected): used as given. Implicit (no `prompt`): the prompt is the
messages both sides share, up to the assistant turn where they part; a pair that parts on a user turn has two
different prompts and is a PROMPT_MISMATCH. A text `prompt` next to conversational chosen/rejected (UltraFeedback
binarized) is implicit too, and must equal the extracted prompt's last user turn. Text fields become one message:
prompt -> user, chosen/rejected -> assistant.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_formats.fields import json_type, required
from data_formats.formats.spec import Format
from data_formats.messages import SAME_ROLES, as_messages, from_tagged, message
from data_formats.problems import EMPTY_PROMPT, PROMPT_MISMATCH, WRONG_TYPE, RowProblem

HH_MARKER = "\n\nHuman:"


def matches(row: dict) -> bool:
    if "chosen" not in row or "rejected" not in row or "conversations" in row:
        return False
    chosen = row["chosen"]
    return "prompt" in row or not (type(chosen) is str and HH_MARKER in chosen)


def convert(row: dict) -> list[dict]:
    chosen = required(row, "chosen")
    rejected = required(row, "rejected")
    prompt = row.get("prompt")
    if prompt is not None and (type(prompt) is list) == (type(chosen) is list):
        return [{"prompt": as_messages(prompt, "prompt", "user"), "chosen": as_messages(chosen, "chosen", "assistant"),
                 "rejected": as_messages(rejected, "rejected", "assistant")}]
    if type(chosen) is list and type(rejected) is list:
        pair = split_shared_prompt(from_tagged(chosen, "chosen", "role", "content", SAME_ROLES),
                                   from_tagged(rejected, "rejected", "role", "content", SAME_ROLES))
        if type(prompt) is str and not _ends_with_user_text(pair["prompt"], prompt):
            raise RowProblem(PROMPT_MISMATCH, "the 'prompt' text is not the last user turn of the prompt shared by "
                                              "chosen and rejected")
        return [pair]
    if type(chosen) is str and type(rejected) is str and prompt is None:
        return [_split_shared_text(chosen, rejected)]
    raise RowProblem(WRONG_TYPE, f"'chosen' ({json_type(chosen)}), 'rejected' ({json_type(rejected)}) and 'prompt' "
                                 f"({json_type(prompt)}) must all be strings or all be message arrays (an implicit "
                                 "prompt may be a string)")


def split_shared_prompt(chosen: list[dict], rejected: list[dict]) -> dict:
    """Implicit prompt of two conversations: the messages they share before the assistant turn where they part."""
    shared = _shared_prefix_length(chosen, rejected)
    if shared < len(chosen) and shared < len(rejected):
        if chosen[shared]["role"] != "assistant" or rejected[shared]["role"] != "assistant":
            raise RowProblem(PROMPT_MISMATCH, f"chosen and rejected differ at message {shared}, a "
                                              f"{chosen[shared]['role']} turn, before their replies")
        cut = shared
    else:
        # One side is a prefix of the other (or they are equal): the reply starts at the last shared assistant turn.
        cut = next((i for i in range(shared - 1, -1, -1) if chosen[i]["role"] == "assistant"), 0)
    if cut == 0:
        raise RowProblem(EMPTY_PROMPT, "chosen and rejected share no prompt before their replies")
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


def _split_shared_text(chosen: str, rejected: str) -> dict:
    # TRL's rule for text pairs: the common prefix, without a trailing space, is the prompt.
    shared = _shared_prefix_length(chosen, rejected)
    if shared and chosen[shared - 1] == " ":
        shared -= 1
    if shared == 0:
        raise RowProblem(EMPTY_PROMPT, "chosen and rejected share no leading prompt text")
    return {"prompt": [message("user", chosen[:shared])], "chosen": [message("assistant", chosen[shared:])],
            "rejected": [message("assistant", rejected[shared:])]}


def _ends_with_user_text(prompt: list[dict], text: str) -> bool:
    users = [m for m in prompt if m["role"] == "user"]
    return bool(users) and users[-1]["content"] == text


def _shared_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items (messages or characters) two sequences share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

FORMAT = Format(
    name="trl_preference",
    kind="preference",
    columns=("prompt", "chosen", "rejected"),
    required=("chosen", "rejected"),
    detected_by="`chosen` + `rejected` (text or messages), optional `prompt`; not hh-rlhf transcripts",
    example='{"prompt": [{"role": "user", "content": "Sky color?"}], '
            '"chosen": [{"role": "assistant", "content": "Blue."}], '
            '"rejected": [{"role": "assistant", "content": "Green."}]}',
    matches=matches,
    convert=convert,
)
