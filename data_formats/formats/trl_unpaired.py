"""TRL unpaired preference rows (`prompt` + `completion` + boolean `label`) -> kto rows.

Text fields become one message: prompt -> user, completion -> assistant.
"""

from __future__ import annotations

from data_formats.fields import required, required_bool
from data_formats.formats.spec import Format
from data_formats.messages import as_messages


def matches(row: dict) -> bool:
    return "prompt" in row and "completion" in row and "label" in row


def convert(row: dict) -> list[dict]:
    label = required_bool(row, "label")
    return [{"prompt": as_messages(required(row, "prompt"), "prompt", "user"),
             "completion": as_messages(required(row, "completion"), "completion", "assistant"), "label": label}]


FORMAT = Format(
    name="trl_unpaired",
    kind="kto",
    columns=("prompt", "completion", "label"),
    required=("prompt", "completion", "label"),
    detected_by="`prompt` + `completion` + `label`",
    example='{"prompt": "2+2?", "completion": "5", "label": false}',
    matches=matches,
    convert=convert,
)
