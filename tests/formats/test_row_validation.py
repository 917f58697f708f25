"""Validation of canonical rows: roles, turn order, empty and non-text content, pairs, and prompt projection."""

from __future__ import annotations

import pytest

from data_formats.kinds import VALIDATORS, to_prompt
from data_formats.problems import RowProblem


def m(role, content="text"):
    return {"role": role, "content": content}


def reason(kind: str, row: dict) -> str | None:
    try:
        VALIDATORS[kind](row)
    except RowProblem as problem:
        return problem.reason
    return None


@pytest.mark.parametrize(("messages", "expected"), [
    ([m("user"), m("assistant")], None),
    ([m("system"), m("user"), m("assistant"), m("tool"), m("assistant")], None),
    ([m("user"), m("assistant"), m("tool"), m("tool"), m("assistant")], None),
    ([m("user"), m("user"), m("assistant")], "repeated_role"),
    ([m("user"), m("assistant"), m("assistant")], "repeated_role"),
    ([m("system"), m("system"), m("user"), m("assistant")], "repeated_role"),
    ([m("user"), m("system"), m("assistant")], "role_order"),
    ([m("system"), m("assistant")], "role_order"),
    ([m("assistant"), m("user"), m("assistant")], "role_order"),
    ([m("user"), m("tool"), m("assistant")], "role_order"),
    ([m("user"), m("assistant"), m("tool"), m("user"), m("assistant")], "role_order"),
    ([m("user"), m("assistant"), m("user")], "no_final_reply"),
    ([m("user"), m("assistant"), m("tool")], "no_final_reply"),
    ([m("user"), m("assistant", "  ")], "empty_final_reply"),
    ([m("user", ""), m("assistant")], "empty_content"),
    ([m("user"), m("assistant", 5)], "wrong_type"),
    ([m("user"), m("assistant", [{"type": "text", "text": "hi"}])], "wrong_type"),
    ([m("user"), m("bot")], "unknown_role"),
    ([m("user"), {"content": "x"}], "unknown_role"),
    ([m("user"), "assistant: hi"], "wrong_type"),
    ([], "empty_content"),
    ("user: hi", "wrong_type"),
])
def test_sft_conversation_rules(messages, expected):
    assert reason("sft", {"messages": messages}) == expected


@pytest.mark.parametrize(("row", "expected"), [
    ({"prompt": [m("user")], "chosen": [m("assistant", "a")], "rejected": [m("assistant", "b")]}, None),
    ({"prompt": [m("user")], "chosen": [m("assistant", "a")], "rejected": [m("assistant", "a")]},
     "chosen_equals_rejected"),
    ({"prompt": [], "chosen": [m("assistant", "a")], "rejected": [m("assistant", "b")]}, "empty_prompt"),
    ({"prompt": [m("user"), m("assistant")], "chosen": [m("assistant", "a")], "rejected": [m("assistant", "b")]},
     "role_order"),
    ({"prompt": [m("user")], "chosen": [], "rejected": [m("assistant", "b")]}, "empty_final_reply"),
    ({"prompt": [m("user")], "chosen": [m("assistant", "")], "rejected": [m("assistant", "b")]}, "empty_final_reply"),
    ({"prompt": [m("user")], "chosen": [m("assistant", "a"), m("user", "more")], "rejected": [m("assistant", "b")]},
     "no_final_reply"),
    ({"prompt": [m("user")], "chosen": [m("assistant", "a"), m("user"), m("assistant")],
      "rejected": [m("assistant", "b")]}, "role_order"),
    ({"prompt": [m("user")], "chosen": [m("user", "a")], "rejected": [m("assistant", "b")]}, "repeated_role"),
])
def test_preference_rules(row, expected):
    assert reason("preference", row) == expected


def test_kto_and_prompt_rules():
    assert reason("kto", {"prompt": [m("user")], "completion": [m("assistant")], "label": True}) is None
    assert reason("kto", {"prompt": [m("user")], "completion": [m("assistant")], "label": 1}) == "wrong_type"
    assert reason("prompt", {"prompt": [m("system"), m("user")]}) is None
    assert reason("prompt", {"prompt": [m("system")]}) == "role_order"
    assert reason("prompt", {"prompt": [m("user"), m("assistant"), m("tool")]}) is None
    assert reason("sft", {"prompt": [m("user")], "completion": [m("assistant")]}) is None
    assert reason("sft", {"prompt": [m("user")], "completion": [m("user")]}) == "repeated_role"


def test_prompt_projection():
    convo = [m("system"), m("user", "q1"), m("assistant", "a1"), m("user", "q2"), m("assistant", "a2")]
    assert to_prompt({"messages": convo}) == {"prompt": convo[:-1]}
    assert to_prompt({"messages": convo[:-1]}) == {"prompt": convo[:-1]}
    assert to_prompt({"messages": convo, "tools": [{"name": "f"}]}) == {"prompt": convo[:-1], "tools": [{"name": "f"}]}
    assert to_prompt({"prompt": convo[:2], "chosen": [m("assistant")], "rejected": [m("assistant", "x")]}) == {
        "prompt": convo[:2]}
    assert to_prompt({"prompt": convo[:2], "completion": [m("assistant")], "label": False}) == {"prompt": convo[:2]}
