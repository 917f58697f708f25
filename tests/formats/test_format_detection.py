"""Format auto-detection, explicit overrides, custom column names, and kind compatibility."""

from __future__ import annotations

import pytest

from data_formats import FORMATS, DataFormatError, Source, inspect, load_source

ALPACA = {"instruction": "Say hi.", "output": "Hi!"}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]}


def test_every_format_example_is_detected_as_itself(write_jsonl):
    import json

    for name, fmt in FORMATS.items():
        path = write_jsonl([json.loads(fmt.example)], name=f"{name}.jsonl")
        loaded = load_source(str(path), fmt.kind)
        assert loaded.report.format == name, name
        assert loaded.report.detected == "auto: 1/1 sampled rows match"
        assert len(loaded.rows) == 1


def test_rows_matching_two_formats_are_ambiguous_and_the_keys_are_listed(write_jsonl):
    with pytest.raises(DataFormatError, match="ambiguous data format") as raised:
        load_source(str(write_jsonl([ALPACA | SHAREGPT] * 3)), "sft")
    message = str(raised.value)
    assert "alpaca (3 rows)" in message and "sharegpt (3 rows)" in message
    assert "instruction (3)" in message and "conversations (3)" in message


def test_half_and_half_file_is_ambiguous(write_jsonl):
    with pytest.raises(DataFormatError, match="ambiguous data format"):
        load_source(str(write_jsonl([ALPACA, SHAREGPT] * 5)), "sft")


def test_detection_looks_at_many_rows_not_just_the_first(write_jsonl):
    # A malformed first row does not decide the format: the majority does, and the odd row gets a row error.
    path = write_jsonl([{"conversations": "oops", "instruction": "x"}] + [ALPACA] * 9)
    loaded = load_source(str(path), "sft", on_error="skip")
    assert loaded.report.format == "alpaca"
    assert loaded.report.detected == "auto: 9/10 sampled rows match"
    assert [(p.row, p.reason) for p in loaded.report.problems] == [(1, "missing_field")]


def test_unknown_rows_list_keys_and_closest_formats(write_jsonl):
    with pytest.raises(DataFormatError, match="cannot detect the data format") as raised:
        load_source(str(write_jsonl([{"question": "Q", "answer": "A"}] * 4)), "sft")
    message = str(raised.value)
    assert "question (4), answer (4)" in message
    assert "paired_answers needs question + response_j + response_k (missing: response_j, response_k)" in message
    assert "columns={canonical: actual}" in message


def test_columns_mapping_makes_custom_names_work(write_jsonl):
    path = write_jsonl([{"q": "Say hi.", "a": "Hi!", "meta": 1}])
    loaded = load_source(Source(str(path), columns={"instruction": "q", "output": "a"}), "sft")
    assert loaded.report.format == "alpaca"
    assert loaded.rows == [{"messages": [{"role": "user", "content": "Say hi."},
                                         {"role": "assistant", "content": "Hi!"}]}]
    assert loaded.report.ignored_columns == ["meta"]
    assert "instruction <- q" in loaded.report.summary()


def test_columns_mapping_to_a_nested_chat_column(write_jsonl):
    path = write_jsonl([{"dialog": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}])
    loaded = load_source(Source(str(path), format="openai_chat", columns={"messages": "dialog"}), "sft")
    assert loaded.rows[0]["messages"][1]["content"] == "Hey"


def test_unknown_canonical_column_name_is_an_error(write_jsonl):
    with pytest.raises(DataFormatError, match="'answer' are not alpaca columns; alpaca reads: instruction"):
        load_source(Source(str(write_jsonl([ALPACA])), format="alpaca", columns={"answer": "output"}), "sft")


def test_explicit_format_overrides_detection(write_jsonl):
    # Detected as trl_preference; forced to trl_prompt, the same file gives prompt-only rows.
    path = write_jsonl([{"prompt": "Q", "chosen": "good", "rejected": "bad"}])
    assert load_source(str(path), "preference").report.format == "trl_preference"
    forced = load_source(Source(str(path), format="trl_prompt"), "prompt")
    assert forced.report.format == "trl_prompt" and forced.report.detected == "given"
    assert forced.report.rows_out == 1
    with pytest.raises(DataFormatError, match="unknown format 'alpacca'"):
        Source(str(path), format="alpacca")


def test_explicit_format_that_does_not_fit_gives_row_errors(write_jsonl):
    report = load_source(Source(str(write_jsonl([ALPACA])), format="sharegpt"), "sft", on_error="skip").report
    assert report.skipped == {"missing_field": 1}
    assert "missing field 'conversations' (row has: instruction, output)" in report.problems[0].detail


def test_kind_must_be_one_the_format_can_give(write_jsonl):
    path = str(write_jsonl([SHAREGPT]))
    with pytest.raises(DataFormatError, match="sharegpt rows are sft data; cannot produce kto rows"):
        load_source(path, "kto")
    with pytest.raises(DataFormatError, match="kind must be one of sft, preference, kto, prompt"):
        load_source(path, "dpo")
    with pytest.raises(DataFormatError, match="on_error must be one of raise, skip"):
        load_source(path, "sft", on_error="ignore")
    with pytest.raises(DataFormatError, match="kind must be one of"):
        inspect(path, "rlhf")


def test_source_arguments_are_checked():
    with pytest.raises(DataFormatError, match="weight must be a number > 0"):
        Source("a.jsonl", weight=0)
    with pytest.raises(DataFormatError, match="columns must map"):
        Source("a.jsonl", columns={"output": 3})
