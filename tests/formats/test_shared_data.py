"""Every real file in ../shared/data: detected as the right format, converted, and its counted quirks reported.

Counts come from /work/shared/data/README.md (which counts whole transcripts; ours are per row and reason).
"""

from __future__ import annotations

import pytest

from data_formats import DataFormatError, InvalidRowsError, inspect, load_source

# path, format, natural kind, rows in, {problem reason: count}, {drop reason: count}, {note: count}
FILES = [
    ("alpaca_eval/alpaca_eval_gpt4__minichat-3b.json", "pairwise_judged", "preference", 805, {},
     {"no_judgment_0": 5, "no_judgment_null": 1}, {}),
    ("alpaca_eval/weighted_alpaca_eval_gpt4_turbo__FuseChat-Llama-3.2-3B-Instruct.json", "pairwise_judged",
     "preference", 805, {}, {"tie": 3}, {}),
    ("fastchat/dummy_conversation.json", "sharegpt", "sft", 500, {}, {}, {}),
    ("hh-rlhf/helpful-base/test.jsonl", "hh_rlhf", "preference", 1854,
     {"chosen_equals_rejected": 2, "empty_final_reply": 2, "repeated_role": 12}, {}, {}),
    ("hh-rlhf/harmless-base/test.jsonl", "hh_rlhf", "preference", 1812,
     {"empty_final_reply": 4, "repeated_role": 8}, {}, {}),
    ("hh-rlhf/helpful-online/test.jsonl", "hh_rlhf", "preference", 1137,
     {"chosen_equals_rejected": 2, "empty_final_reply": 3, "no_final_reply": 2, "empty_content": 1}, {}, {}),
    ("hh-rlhf/helpful-rejection-sampled/test.jsonl", "hh_rlhf", "preference", 2749,
     {"chosen_equals_rejected": 32, "repeated_role": 3}, {}, {}),
    ("llama-factory/alpaca_en_demo.json", "alpaca", "sft", 699, {}, {}, {"noinput_placeholder_kept": 1}),
    ("llama-factory/dpo_en_demo.json", "sharegpt_preference", "preference", 300, {}, {}, {}),
    ("llama-factory/kto_en_demo.json", "kto", "kto", 300, {}, {}, {}),
    ("llama-factory/glaive_toolcall_en_demo.json", "sharegpt", "sft", 300, {}, {}, {"empty_tools_list_left_out": 109}),
    ("llama-factory/identity.json", "alpaca", "sft", 91, {}, {}, {"template_slot_kept": 85}),
    ("torchtune-assets/alpaca_tiny.json", "alpaca", "sft", 100, {}, {}, {"nooutput_placeholder_kept": 1}),
    ("torchtune-assets/stack_exchange_paired_tiny.json", "paired_answers", "preference", 25, {}, {}, {}),
    ("torchtune-assets/hh_rlhf_tiny.json", "trl_preference", "preference", 1, {}, {}, {}),
    ("torchtune-assets/chat_tiny.json", "sharegpt", "sft", 1, {}, {}, {}),
    ("stanford_alpaca/seed_tasks.jsonl", "alpaca", "sft", 175, {}, {}, {}),
    ("medicalgpt-sharegpt/sharegpt_zh_1K_format.jsonl", "sharegpt", "sft", 1000,
     {"no_final_reply": 7, "empty_content": 1}, {}, {}),
    ("openai-cookbook/toy_chat_fine_tuning.jsonl", "openai_chat", "sft", 5, {"role_order": 1}, {}, {}),
]


@pytest.mark.parametrize(("name", "fmt", "kind", "rows", "problems", "dropped", "notes"), FILES,
                         ids=[f[0] for f in FILES])
def test_real_file_detected_converted_and_quirks_counted(shared_data, name, fmt, kind, rows, problems, dropped,
                                                         notes):
    path = str(shared_data / name)
    loaded = load_source(path, kind, on_error="skip")
    report = loaded.report
    assert (report.format, report.kind, report.rows_in) == (fmt, kind, rows)
    assert report.skipped == problems
    assert report.dropped == dropped
    assert report.notes == notes
    assert report.rows_in == report.rows_converted + sum(problems.values()) + sum(dropped.values())
    assert len(loaded.rows) == report.rows_out >= report.rows_converted
    if problems:
        with pytest.raises(InvalidRowsError) as raised:
            load_source(path, kind)
        assert raised.value.report.problem_counts == problems
    else:
        assert load_source(path, kind).report.rows_out == report.rows_out
    # Every format can also give prompt-only rows (for PPO/GRPO).
    prompts = load_source(path, "prompt", on_error="skip")
    assert prompts.rows and all(set(row) <= {"prompt", "tools"} for row in prompts.rows)
    assert inspect(path)["valid"] == (not problems)


def test_problem_rows_point_at_the_right_lines(shared_data):
    report = load_source(str(shared_data / "medicalgpt-sharegpt/sharegpt_zh_1K_format.jsonl"), "sft",
                         on_error="skip").report
    by_reason = {}
    for problem in report.problems:
        by_reason.setdefault(problem.reason, []).append(problem.row)
    assert by_reason == {"empty_content": [59], "no_final_reply": [119, 341, 587, 708, 781, 917, 986]}
    cookbook = load_source(str(shared_data / "openai-cookbook/toy_chat_fine_tuning.jsonl"), "sft", on_error="skip")
    (problem,) = cookbook.report.problems
    assert problem.row == 4 and "assistant turn before any user turn" in problem.detail
    assert str(problem).startswith(f"{shared_data}/openai-cookbook/toy_chat_fine_tuning.jsonl:4: role_order")


def test_hh_problems_in_prompt_rows_only_when_they_touch_the_prompt(shared_data):
    # chosen == rejected or an empty reply says nothing against the prompt: prompt-only rows keep those pairs.
    loaded = load_source(str(shared_data / "hh-rlhf/helpful-rejection-sampled/test.jsonl"), "prompt")
    assert loaded.report.rows_out == 2749


def test_dataset_info_is_metadata_not_data(shared_data):
    with pytest.raises(DataFormatError, match="cannot detect the data format") as raised:
        load_source(str(shared_data / "llama-factory/dataset_info.json"), "sft")
    message = str(raised.value)
    assert "alpaca_en_demo" in message and "looks like metadata" in message and "dataset_info.json" in message


def test_alpaca_file_asked_as_preference_is_a_clear_error(shared_data):
    with pytest.raises(DataFormatError, match="alpaca rows are sft data; cannot produce preference rows"):
        load_source(str(shared_data / "llama-factory/alpaca_en_demo.json"), "preference")


def test_tool_calls_and_observations_map_to_assistant_and_tool(shared_data):
    rows = load_source(str(shared_data / "llama-factory/glaive_toolcall_en_demo.json"), "sft").rows
    with_tools = [row for row in rows if "tools" in row]
    assert len(with_tools) == 300 - 109
    assert all(isinstance(tool, dict) and "name" in tool for row in with_tools for tool in row["tools"])
    roles = [[m["role"] for m in row["messages"]] for row in rows]
    call_turns = [row["messages"][i] for row, r in zip(rows, roles, strict=True)
                  for i in range(len(r) - 1) if r[i + 1] == "tool"]
    assert len(call_turns) == 211
    assert all(m["role"] == "assistant" and m["content"].startswith('{"name"') for m in call_turns)


def test_seed_tasks_and_dpo_demo_shapes(shared_data):
    seed = load_source(str(shared_data / "stanford_alpaca/seed_tasks.jsonl"), "sft").rows
    assert seed[1]["messages"] == [
        {"role": "user", "content": "What is the relation between the given pairs?\n\nNight : Day :: Right : Left"},
        {"role": "assistant", "content": "The relation between the given pairs is that they are opposites."},
    ]
    dpo = load_source(str(shared_data / "llama-factory/dpo_en_demo.json"), "preference").rows
    assert sum(row["prompt"][0]["role"] == "system" for row in dpo) == 80
    assert all(row["prompt"][-1]["role"] == "user" for row in dpo)
    kto = load_source(str(shared_data / "llama-factory/kto_en_demo.json"), "kto").rows
    assert sum(row["label"] for row in kto) == 150


def test_alpaca_eval_preference_picks_the_judged_winner(shared_data):
    import json

    raw = json.loads((shared_data / "alpaca_eval/alpaca_eval_gpt4__minichat-3b.json").read_text())
    rows = load_source(str(shared_data / "alpaca_eval/alpaca_eval_gpt4__minichat-3b.json"), "preference").rows
    judged = [r for r in raw if r["preference"] in (1.0, 2.0)]
    assert len(rows) == len(judged) == 799
    for source, row in zip(judged, rows, strict=True):
        winner, loser = ("output_2", "output_1") if source["preference"] == 2.0 else ("output_1", "output_2")
        assert row["chosen"][0]["content"] == source[winner] and row["rejected"][0]["content"] == source[loser]
