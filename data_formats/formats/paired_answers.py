"""Stack Exchange paired rows (`question`, `response_j`, `response_k`; j is preferred) -> preference."""

from __future__ import annotations

from data_formats.fields import required_text
from data_formats.formats.spec import Format
from data_formats.messages import message


def matches(row: dict) -> bool:
    return "question" in row and "response_j" in row and "response_k" in row


def convert(row: dict) -> list[dict]:
    return [{"prompt": [message("user", required_text(row, "question"))],
             "chosen": [message("assistant", required_text(row, "response_j"))],
             "rejected": [message("assistant", required_text(row, "response_k"))]}]


FORMAT = Format(
    name="paired_answers",
    kind="preference",
    columns=("question", "response_j", "response_k"),
    required=("question", "response_j", "response_k"),
    detected_by="`question` + `response_j` + `response_k`",
    example='{"question": "How do I sort a list?", "response_j": "Use sorted().", "response_k": "You cannot."}',
    matches=matches,
    convert=convert,
)
