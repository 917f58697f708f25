"""KTO rows (`messages` + boolean `label`, as in LLaMA-Factory) -> kto rows.

The label rates the last message, which must be an assistant reply: prompt = every message before it,
completion = [that reply].
"""

from __future__ import annotations

from data_formats.fields import required, required_bool
from data_formats.formats.spec import Format
from data_formats.messages import SAME_ROLES, from_tagged
from data_formats.problems import EMPTY_CONTENT, NO_FINAL_REPLY, RowProblem


def matches(row: dict) -> bool:
    return "messages" in row and "label" in row


def convert(row: dict) -> list[dict]:
    label = required_bool(row, "label")
    messages = from_tagged(required(row, "messages"), "messages", "role", "content", SAME_ROLES)
    if not messages:
        raise RowProblem(EMPTY_CONTENT, "'messages' is empty")
    if messages[-1]["role"] != "assistant":
        raise RowProblem(NO_FINAL_REPLY, f"the last message is a {messages[-1]['role']} turn; the label must rate "
                                         "a final assistant reply")
    return [{"prompt": messages[:-1], "completion": messages[-1:], "label": label}]


FORMAT = Format(
    name="kto",
    kind="kto",
    columns=("messages", "label"),
    required=("messages", "label"),
    detected_by="`messages` + `label`",
    example='{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], '
            '"label": true}',
    matches=matches,
    convert=convert,
)
