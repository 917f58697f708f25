"""ShareGPT preference rows (LLaMA-Factory: `conversations` prompt + `chosen`/`rejected` {from, value}) -> preference.

`chosen`/`rejected` may be one {from, value} turn or a list of them. Tags map as in `sharegpt`.
"""

from __future__ import annotations

from typing import Any

from data_formats.fields import required
from data_formats.formats.sharegpt import ROLE_OF_TAG, conversation
from data_formats.formats.spec import Format
from data_formats.messages import from_tagged


def matches(row: dict) -> bool:
    return "conversations" in row and "chosen" in row and "rejected" in row


def convert(row: dict) -> list[dict]:
    return [{"prompt": conversation(row), "chosen": _reply(required(row, "chosen"), "chosen"),
             "rejected": _reply(required(row, "rejected"), "rejected")}]


def _reply(value: Any, field: str) -> list[dict]:
    return from_tagged([value] if type(value) is dict else value, field, "from", "value", ROLE_OF_TAG)


FORMAT = Format(
    name="sharegpt_preference",
    kind="preference",
    columns=("conversations", "chosen", "rejected", "system"),
    required=("conversations", "chosen", "rejected"),
    detected_by="`conversations` + `chosen` + `rejected`",
    example='{"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello!"}, '
            '"rejected": {"from": "gpt", "value": "What?"}}',
    matches=matches,
    convert=convert,
)
