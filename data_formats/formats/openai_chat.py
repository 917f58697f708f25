"""OpenAI chat rows (`messages: [{role, content}]`, optional `tools`) -> sft messages.

Messages keep only `role` and `content`; other message keys (OpenAI's `weight`, `name`) are ignored and counted.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_formats.fields import required
from data_formats.formats.spec import Format
from data_formats.messages import SAME_ROLES, from_tagged, tools_notes, with_tools


def matches(row: dict) -> bool:
    return "messages" in row and "label" not in row and "chosen" not in row and "rejected" not in row


def convert(row: dict) -> list[dict]:
    messages = from_tagged(required(row, "messages"), "messages", "role", "content", SAME_ROLES)
    return [with_tools({"messages": messages}, row)]


def notes(row: dict) -> Iterator[str]:
    yield from tools_notes(row)
    if any(len(m) > 2 for m in row["messages"]):
        yield "message_keys_ignored"


FORMAT = Format(
    name="openai_chat",
    kind="sft",
    columns=("messages", "tools"),
    required=("messages",),
    detected_by="`messages` (list of `role`/`content`), no `label`/`chosen`/`rejected`",
    example='{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
    matches=matches,
    convert=convert,
    notes=notes,
)
