"""Chat messages in TRL's vocabulary ({"role", "content"}): building them from source rows and checking turn order."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from data_formats.fields import json_type
from data_formats.problems import (
    BAD_VALUE,
    EMPTY_CONTENT,
    EMPTY_FINAL_REPLY,
    MISSING_FIELD,
    REPEATED_ROLE,
    ROLE_ORDER,
    UNKNOWN_ROLE,
    WRONG_TYPE,
    RowProblem,
)

ROLES = ("system", "user", "assistant", "tool")
SAME_ROLES: Mapping[str, str] = {role: role for role in ROLES}

# Which role may follow which; None is the start of the conversation.
_ALLOWED_NEXT: dict[str | None, tuple[str, ...]] = {
    None: ("system", "user"),
    "system": ("user",),
    "user": ("assistant",),
    "assistant": ("user", "tool"),
    "tool": ("assistant", "tool"),
}


def message(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


def from_tagged(items: Any, field: str, role_key: str, content_key: str, roles: Mapping[str, str]) -> list[dict]:
    """Turn a list of {role_key: tag, content_key: text} into canonical messages, mapping tags through `roles`.

    Content types are left to `check_turns`, which reports them with the canonical position.
    """
    if type(items) is not list:
        raise RowProblem(WRONG_TYPE, f"{field!r} must be an array of messages, got {json_type(items)}")
    out = []
    for i, item in enumerate(items):
        if type(item) is not dict:
            raise RowProblem(WRONG_TYPE, f"{field}[{i}] must be an object with {role_key!r} and {content_key!r}, "
                                         f"got {json_type(item)}")
        if role_key not in item or content_key not in item:
            missing = role_key if role_key not in item else content_key
            raise RowProblem(MISSING_FIELD, f"{field}[{i}] has no {missing!r} (has: {', '.join(map(str, item))})")
        tag = item[role_key]
        role = roles.get(tag) if type(tag) is str else None
        if role is None:
            raise RowProblem(UNKNOWN_ROLE, f"{field}[{i}] has unknown {role_key} {tag!r}; expected one of "
                                           f"{', '.join(roles)}")
        out.append({"role": role, "content": item[content_key]})
    return out


def as_messages(value: Any, field: str, role: str) -> list[dict]:
    """A TRL field that is either plain text (one message with `role`) or already a list of messages."""
    if type(value) is str:
        return [message(role, value)]
    if type(value) is list:
        return from_tagged(value, field, "role", "content", SAME_ROLES)
    if value is None:
        raise RowProblem(MISSING_FIELD, f"{field!r} is missing or null")
    raise RowProblem(WRONG_TYPE, f"{field!r} must be a string or an array of messages, got {json_type(value)}")


def check_turns(messages: Any, field: str, prev: str | None = None, *, reply: bool = False) -> str | None:
    """Check roles, content and turn order; return the last role (or `prev` when empty).

    `prev` is the role just before these messages (the prompt's last role when checking a reply). With
    `reply=True`, an empty last assistant turn is reported as EMPTY_FINAL_REPLY rather than EMPTY_CONTENT.
    """
    if type(messages) is not list:
        raise RowProblem(WRONG_TYPE, f"{field!r} must be an array of messages, got {json_type(messages)}")
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        if type(msg) is not dict:
            raise RowProblem(WRONG_TYPE, f"{field}[{i}] must be a message object, got {json_type(msg)}")
        role = msg.get("role")
        content = msg.get("content")
        if type(role) is not str or role not in _ALLOWED_NEXT:
            raise RowProblem(UNKNOWN_ROLE, f"{field}[{i}] has role {role!r}; expected one of {', '.join(ROLES)}")
        if type(content) is not str:
            raise RowProblem(WRONG_TYPE, f"{field}[{i}] ({role}) content must be a string, got {json_type(content)}")
        if role not in _ALLOWED_NEXT[prev]:
            raise _order_problem(prev, role, f"{field}[{i}]")
        if not content or content.isspace():
            if reply and i == last and role == "assistant":
                raise RowProblem(EMPTY_FINAL_REPLY, f"{field}[{i}] is the final assistant reply and it is empty")
            raise RowProblem(EMPTY_CONTENT, f"{field}[{i}] ({role}) is empty")
        prev = role
    return prev


def _order_problem(prev: str | None, role: str, where: str) -> RowProblem:
    if prev == role:
        article = "an" if role == "assistant" else "a"
        return RowProblem(REPEATED_ROLE, f"{where} is {article} {role} turn right after another {role} turn")
    if role == "system":
        return RowProblem(ROLE_ORDER, f"{where} is a system turn; a system turn is allowed only at the start")
    if role == "tool":
        return RowProblem(ROLE_ORDER, f"{where} is a tool turn after a {prev or 'start'} turn; "
                                      "a tool turn must follow an assistant (call) or tool turn")
    if role == "assistant":
        return RowProblem(ROLE_ORDER, f"{where} is an assistant turn before any user turn")
    return RowProblem(ROLE_ORDER, f"{where} is a user turn right after a tool turn; expected the assistant's answer")


def parse_tools(value: Any) -> list[dict] | None:
    """A `tools` field: a JSON string or a list of function schemas; None when absent or empty."""
    if value is None:
        return None
    if type(value) is str:
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowProblem(BAD_VALUE, f"'tools' is a string but not valid JSON: {e}") from None
    if type(value) is not list or any(type(tool) is not dict for tool in value):
        raise RowProblem(WRONG_TYPE, "'tools' must be an array of function-schema objects (or a JSON string of one)")
    return value or None


def is_empty_tools(value: Any) -> bool:
    return value == [] or (type(value) is str and (not value.strip() or value.strip() == "[]"))


def with_tools(out: dict, row: dict) -> dict:
    """The canonical row `out` with the source row's `tools`, where it has any (an empty list is left out)."""
    tools = parse_tools(row.get("tools"))
    if tools:
        out["tools"] = tools
    return out


def tools_notes(row: dict) -> Iterator[str]:
    """The note on a source row whose `tools` column is there but empty, so left out."""
    if "tools" in row and is_empty_tools(row["tools"]):
        yield "empty_tools_list_left_out"
