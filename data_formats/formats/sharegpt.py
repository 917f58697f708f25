"""ShareGPT rows (`conversations: [{from, value}]`, optional `system` and `tools`) -> sft messages.

Tags: human/user -> user, gpt/assistant -> assistant, system -> system, function_call -> assistant (content is the
call's JSON text, verbatim), observation/tool -> tool. `tools` (a JSON string or a list) becomes a list of function
schemas; an empty tools list is left out (TRL renders tool boilerplate for `tools=[]`) and counted as a note.
"""

from __future__ import annotations

from data_formats.fields import optional_text, required
from data_formats.formats.spec import Format
from data_formats.messages import from_tagged, message, tools_notes, with_tools

ROLE_OF_TAG = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


def matches(row: dict) -> bool:
    return "conversations" in row and "chosen" not in row and "rejected" not in row


def conversation(row: dict) -> list[dict]:
    """The `conversations` turns as canonical messages, after the optional `system` column."""
    messages = from_tagged(required(row, "conversations"), "conversations", "from", "value", ROLE_OF_TAG)
    system = optional_text(row, "system")
    return [message("system", system), *messages] if system else messages


def convert(row: dict) -> list[dict]:
    return [with_tools({"messages": conversation(row)}, row)]


FORMAT = Format(
    name="sharegpt",
    kind="sft",
    columns=("conversations", "system", "tools"),
    required=("conversations",),
    detected_by="`conversations` (list of `from`/`value`), no `chosen`/`rejected`",
    example='{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}',
    matches=matches,
    convert=convert,
    notes=tools_notes,
)
