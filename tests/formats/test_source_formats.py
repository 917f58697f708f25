"""One behaviour per source format, on small hand-written rows."""

from __future__ import annotations

import pytest

from data_formats import DataFormatError, Source, load_source


def m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def load(write_jsonl, rows, kind, **source):
    return load_source(Source(str(write_jsonl(rows)), **source), kind, on_error="skip")


def test_alpaca_system_history_input_and_instances(write_jsonl):
    loaded = load(write_jsonl, [
        {"instruction": "Add.", "input": "2 + 2", "output": "4", "system": "Be brief.",
         "history": [["Hi", "Hello!"]]},
        {"instruction": "Name a color.", "input": "", "output": "Blue.", "text": "ignored"},
        {"instruction": "Antonym?",
         "instances": [{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}]},
    ], "sft")
    assert [row["messages"] for row in loaded.rows] == [
        [m("system", "Be brief."), m("user", "Hi"), m("assistant", "Hello!"), m("user", "Add.\n\n2 + 2"),
         m("assistant", "4")],
        [m("user", "Name a color."), m("assistant", "Blue.")],
        [m("user", "Antonym?\n\nhot"), m("assistant", "cold")],
        [m("user", "Antonym?\n\nup"), m("assistant", "down")],
    ]
    assert (loaded.report.rows_in, loaded.report.rows_converted, loaded.report.rows_out) == (3, 3, 4)
    assert loaded.report.ignored_columns == ["text"]


def test_alpaca_bad_rows(write_jsonl):
    report = load(write_jsonl, [
        {"instruction": "A", "output": ""},
        {"instruction": "B", "output": 3},
        {"instruction": "C", "instances": []},
        {"instruction": "D", "output": "x", "history": [["only one"]]},
        {"instruction": "", "output": "x"},
    ], "sft").report
    assert [(p.row, p.reason) for p in report.problems] == [
        (1, "empty_final_reply"), (2, "wrong_type"), (3, "empty_content"), (4, "wrong_type"), (5, "empty_content")]


def test_sharegpt_roles_system_column_and_tools(write_jsonl):
    loaded = load(write_jsonl, [
        {"system": "You call tools.", "tools": '[{"name": "f", "parameters": {}}]', "conversations": [
            {"from": "human", "value": "Use f"}, {"from": "function_call", "value": '{"name": "f"}'},
            {"from": "observation", "value": "42"}, {"from": "gpt", "value": "It is 42."}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}], "tools": "[]"},
        {"conversations": [{"from": "bot", "value": "?"}]},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                           {"from": "gpt", "value": "c"}]},
    ], "sft")
    first, second = loaded.rows
    assert first == {"messages": [m("system", "You call tools."), m("user", "Use f"), m("assistant", '{"name": "f"}'),
                                  m("tool", "42"), m("assistant", "It is 42.")],
                     "tools": [{"name": "f", "parameters": {}}]}
    assert second == {"messages": [m("user", "Hi"), m("assistant", "Hey")]}
    assert loaded.report.notes == {"empty_tools_list_left_out": 1}
    assert loaded.report.skipped == {"unknown_role": 1, "repeated_role": 1}
    # Not merged (a silent fix-up): reported with its position.
    assert loaded.report.problems[1].detail == "messages[1] is a user turn right after another user turn"


def test_openai_chat_keeps_role_and_content_only(write_jsonl):
    loaded = load(write_jsonl, [
        {"messages": [m("user", "Hi"), {"role": "assistant", "content": "Hello", "weight": 0}]},
        {"messages": [m("user", "Hi"), {"role": "assistant", "content": None, "tool_calls": []}]},
        {"messages": [m("user", "Hi"), m("assistant", "Hey"), m("user", "Bye")]},
        {"messages": [m("developer", "Rules"), m("user", "Hi"), m("assistant", "Hey")]},
        {"messages": []},
    ], "sft")
    assert loaded.rows == [{"messages": [m("user", "Hi"), m("assistant", "Hello")]}]
    assert loaded.report.notes == {"message_keys_ignored": 1}
    assert [p.reason for p in loaded.report.problems] == ["wrong_type", "no_final_reply", "unknown_role",
                                                          "empty_content"]


def test_kto_messages_with_label(write_jsonl):
    loaded = load(write_jsonl, [
        {"messages": [m("user", "2+2?"), m("assistant", "4"), m("user", "3+3?"), m("assistant", "7")], "label": False},
        {"messages": [m("user", "2+2?")], "label": True},
        {"messages": [m("user", "2+2?"), m("assistant", "4")], "label": "yes"},
    ], "kto")
    assert loaded.rows == [{"prompt": [m("user", "2+2?"), m("assistant", "4"), m("user", "3+3?")],
                            "completion": [m("assistant", "7")], "label": False}]
    assert [p.reason for p in loaded.report.problems] == ["no_final_reply", "wrong_type"]


def test_trl_unpaired_and_prompt_completion_and_prompt_only(write_jsonl):
    kto = load(write_jsonl, [{"prompt": "2+2?", "completion": "5", "label": False}], "kto", format="trl_unpaired")
    assert kto.rows == [{"prompt": [m("user", "2+2?")], "completion": [m("assistant", "5")], "label": False}]
    sft = load(write_jsonl, [{"prompt": [m("user", "Hi")], "completion": [m("assistant", "Hey")]}], "sft")
    assert sft.report.format == "trl_prompt_completion"
    assert sft.rows == [{"prompt": [m("user", "Hi")], "completion": [m("assistant", "Hey")]}]
    prompts = load(write_jsonl, [{"prompt": "Write a poem."}, {"prompt": [m("system", "S"), m("user", "Q")]}], "prompt")
    assert prompts.report.format == "trl_prompt"
    assert prompts.rows == [{"prompt": [m("user", "Write a poem.")]}, {"prompt": [m("system", "S"), m("user", "Q")]}]


def test_trl_preference_explicit_text(write_jsonl):
    loaded = load(write_jsonl, [{"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."}], "preference")
    assert loaded.report.format == "trl_preference"
    assert loaded.rows == [{"prompt": [m("user", "Sky?")], "chosen": [m("assistant", "Blue.")],
                            "rejected": [m("assistant", "Green.")]}]


def test_trl_preference_implicit_conversational_prompt(write_jsonl):
    loaded = load(write_jsonl, [
        {"chosen": [m("user", "Hi"), m("assistant", "Hey"), m("user", "Sky?"), m("assistant", "Blue.")],
         "rejected": [m("user", "Hi"), m("assistant", "Hey"), m("user", "Sky?"), m("assistant", "Green.")]},
        {"chosen": [m("user", "Sky?"), m("assistant", "Blue.")], "rejected": [m("user", "Sea?"), m("assistant", "X")]},
        {"chosen": [m("user", "Sky?"), m("assistant", "Blue.")],
         "rejected": [m("user", "Sky?"), m("assistant", "Blue.")]},
    ], "preference")
    assert loaded.rows == [{"prompt": [m("user", "Hi"), m("assistant", "Hey"), m("user", "Sky?")],
                            "chosen": [m("assistant", "Blue.")], "rejected": [m("assistant", "Green.")]}]
    assert loaded.report.skipped == {"prompt_mismatch": 1, "chosen_equals_rejected": 1}


def test_trl_preference_text_prompt_next_to_conversations_like_ultrafeedback_binarized(write_jsonl):
    row = {"prompt": "Sky?", "prompt_id": "1", "messages": [m("user", "Sky?"), m("assistant", "Blue.")],
           "chosen": [m("user", "Sky?"), m("assistant", "Blue.")],
           "rejected": [m("user", "Sky?"), m("assistant", "Red")],
           "score_chosen": 9.0, "score_rejected": 2.0}
    other = dict(row, prompt="Something else")
    loaded = load(write_jsonl, [row, other], "preference")
    assert loaded.report.format == "trl_preference"
    assert loaded.rows == [{"prompt": [m("user", "Sky?")], "chosen": [m("assistant", "Blue.")],
                            "rejected": [m("assistant", "Red")]}]
    assert loaded.report.skipped == {"prompt_mismatch": 1}
    assert loaded.report.ignored_columns == ["messages", "prompt_id", "score_chosen", "score_rejected"]


def test_trl_preference_implicit_text_uses_trl_rule(write_jsonl):
    loaded = load(write_jsonl, [{"chosen": "The sky is blue.", "rejected": "The sky is green."}], "preference")
    assert loaded.rows == [{"prompt": [m("user", "The sky is")], "chosen": [m("assistant", " blue.")],
                            "rejected": [m("assistant", " green.")]}]


def test_sharegpt_preference_with_system_turn(write_jsonl):
    loaded = load(write_jsonl, [
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}],
         "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
         "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}},
    ], "preference")
    assert loaded.rows == [{"prompt": [m("system", "S"), m("user", "Q")], "chosen": [m("assistant", "good")],
                            "rejected": [m("assistant", "bad")]}]
    assert loaded.report.skipped == {"role_order": 1}  # prompt ends on an assistant turn


def test_paired_answers_prefers_response_j(write_jsonl):
    loaded = load(write_jsonl, [{"question": "Q", "response_j": "J", "response_k": "K"}], "preference")
    assert loaded.rows == [{"prompt": [m("user", "Q")], "chosen": [m("assistant", "J")],
                            "rejected": [m("assistant", "K")]}]


def test_pairwise_judged_policy(write_jsonl):
    base = {"instruction": "Q", "output_1": "one", "output_2": "two"}
    loaded = load(write_jsonl, [
        dict(base, preference=1.2), dict(base, preference=1.8), dict(base, preference=2),
        dict(base, preference=1.5), dict(base, preference=0.0), dict(base, preference=None),
        dict(base, output_2="one", preference=1.0), dict(base, preference=3.0), dict(base, preference="2"),
    ], "preference")
    winners = [(row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in loaded.rows]
    assert winners == [("one", "two"), ("two", "one"), ("two", "one")]
    assert loaded.report.dropped == {"tie": 1, "no_judgment_0": 1, "no_judgment_null": 1, "identical_outputs": 1}
    assert loaded.report.skipped == {"bad_value": 1, "wrong_type": 1}
    # Policy drops are not errors: they never raise, even under on_error="raise".
    clean = load_source(str(write_jsonl([dict(base, preference=1.5), dict(base, preference=1.0)])), "preference")
    assert clean.report.dropped == {"tie": 1} and len(clean.rows) == 1


SCORED = [
    {"prompt": "Q1", "completions": [{"text": "a", "score": 1}, {"text": "b", "score": 9}, {"text": "c", "score": 5},
                                     {"text": "d", "score": 1}]},
    {"instruction": "Q2", "completions": [{"response": "x", "overall_score": 7.5},
                                          {"response": "y", "overall_score": 2},
                                          {"response": "z", "overall_score": 6}]},
    {"prompt": "Q3", "completions": [{"text": "a", "score": 9}, {"text": "b", "score": 9}, {"text": "c", "score": 1}]},
    {"prompt": "Q4", "completions": [{"text": "a", "score": 9}]},
    {"prompt": "Q5", "completions": [{"text": "a", "score": "high"}, {"text": "b", "score": 1}]},
    {"prompt": "Q6", "completions": [{"text": "a"}, {"text": "b", "score": 1}]},
]


@pytest.mark.parametrize(("rule", "rejected"), [("worst", ["a", "y"]), ("second", ["c", "z"])])
def test_scored_completions_binarize(write_jsonl, rule, rejected):
    loaded = load(write_jsonl, SCORED, "preference", pair_rule=rule)
    assert loaded.report.format == "scored_completions"
    assert [row["chosen"][0]["content"] for row in loaded.rows] == ["b", "x"]
    assert [row["rejected"][0]["content"] for row in loaded.rows] == rejected
    assert loaded.report.dropped == {"tie_at_top": 1, "fewer_than_2_completions": 1}
    assert loaded.report.skipped == {"wrong_type": 1, "missing_field": 1}


def test_scored_completions_random_rule_is_seeded_by_the_prompt(write_jsonl):
    first = load(write_jsonl, SCORED, "preference", pair_rule="random").rows
    again = load(write_jsonl, list(reversed(SCORED)), "preference", pair_rule="random").rows
    assert [r["rejected"] for r in first] == [r["rejected"] for r in reversed(again)]
    assert first[0]["rejected"][0]["content"] in {"a", "c", "d"}
    picks = {load(write_jsonl, [dict(SCORED[0], prompt=f"Q{i}")], "preference", pair_rule="random")
             .rows[0]["rejected"][0]["content"] for i in range(30)}
    assert picks == {"a", "c", "d"}


def test_pair_rule_only_for_scored_completions(write_jsonl):
    with pytest.raises(DataFormatError, match="pair_rule applies to scored_completions only"):
        load(write_jsonl, [{"question": "Q", "response_j": "J", "response_k": "K"}], "preference", pair_rule="second")
    with pytest.raises(DataFormatError, match="pair_rule must be one of"):
        Source("x.jsonl", pair_rule="best")
