"""TRL prompt-completion rows (`prompt` + `completion`, text or messages) -> sft prompt/completion rows.

Text fields become one message: prompt -> user, completion -> assistant. TRL then trains on the completion only.
"""

from __future__ import annotations

from data_formats.fields import required
from data_formats.formats.spec import Format
from data_formats.messages import as_messages


def matches(row: dict) -> bool:
    return "prompt" in row and "completion" in row and "label" not in row


def convert(row: dict) -> list[dict]:
    return [{"prompt": as_messages(required(row, "prompt"), "prompt", "user"),
             "completion": as_messages(required(row, "completion"), "completion", "assistant")}]


FORMAT = Format(
    name="trl_prompt_completion",
    kind="sft",
    columns=("prompt", "completion"),
    required=("prompt", "completion"),
    detected_by="`prompt` + `completion`, no `label`",
    example='{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey"}]}',
    matches=matches,
    convert=convert,
)
