"""TRL prompt-only rows (`prompt`, text or messages, optional `tools`) -> prompt rows, for PPO/GRPO generation."""

from __future__ import annotations

from collections.abc import Iterator

from data_formats.fields import required
from data_formats.formats.spec import Format
from data_formats.messages import as_messages, is_empty_tools, parse_tools

_OTHER_TRL_COLUMNS = ("chosen", "rejected", "completion", "completions", "messages")


def matches(row: dict) -> bool:
    return "prompt" in row and not any(key in row for key in _OTHER_TRL_COLUMNS)


def convert(row: dict) -> list[dict]:
    out: dict = {"prompt": as_messages(required(row, "prompt"), "prompt", "user")}
    tools = parse_tools(row.get("tools"))
    if tools:
        out["tools"] = tools
    return [out]


def notes(row: dict) -> Iterator[str]:
    if "tools" in row and is_empty_tools(row["tools"]):
        yield "empty_tools_list_left_out"


FORMAT = Format(
    name="trl_prompt",
    kind="prompt",
    columns=("prompt", "tools"),
    required=("prompt",),
    detected_by="`prompt` only (no chosen/rejected/completion/messages)",
    example='{"prompt": [{"role": "user", "content": "Write a haiku about rain."}]}',
    matches=matches,
    convert=convert,
    notes=notes,
)
