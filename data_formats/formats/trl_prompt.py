"""TRL prompt-only rows (`prompt`, text or messages, optional `tools`) -> prompt rows, for PPO/GRPO generation."""

from __future__ import annotations

from data_formats.fields import required
from data_formats.formats.spec import Format
from data_formats.messages import as_messages, tools_notes, with_tools

_OTHER_TRL_COLUMNS = ("chosen", "rejected", "completion", "completions", "messages")


def matches(row: dict) -> bool:
    return "prompt" in row and not any(key in row for key in _OTHER_TRL_COLUMNS)


def convert(row: dict) -> list[dict]:
    return [with_tools({"prompt": as_messages(required(row, "prompt"), "prompt", "user")}, row)]


FORMAT = Format(
    name="trl_prompt",
    kind="prompt",
    columns=("prompt", "tools"),
    required=("prompt",),
    detected_by="`prompt` only (no chosen/rejected/completion/messages)",
    example='{"prompt": [{"role": "user", "content": "Write a haiku about rain."}]}',
    matches=matches,
    convert=convert,
    notes=tools_notes,
)
