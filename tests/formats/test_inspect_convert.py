"""inspect() / render_inspect() and convert(): what the CLI's `align data inspect|convert` show and write."""

from __future__ import annotations

import json

import pytest

from data_formats import InvalidRowsError, convert, inspect, load_source, render_inspect
from data_formats.conversion import report_path


def test_inspect_clean_file_uses_the_natural_kind(shared_data):
    result = inspect(str(shared_data / "llama-factory/dpo_en_demo.json"))
    assert (result["format"], result["kind"], result["rows"], result["rows_valid"]) == (
        "sharegpt_preference", "preference", 300, 300)
    assert result["valid"] is True and result["problems"] == {}
    assert set(result["lengths"]) == {"prompt_chars", "prompt_turns", "chosen_chars", "rejected_chars"}
    assert result["lengths"]["prompt_turns"]["max"] == 13
    assert len(result["examples"]) == 2 and "--- chosen ---" in result["examples"][0]
    json.dumps(result)  # plain data, ready for --json


def test_inspect_invalid_file_lists_problems_with_rows(shared_data):
    result = inspect(str(shared_data / "medicalgpt-sharegpt/sharegpt_zh_1K_format.jsonl"))
    assert result["valid"] is False
    assert result["problems"]["no_final_reply"]["count"] == 7
    assert result["problems"]["no_final_reply"]["first_rows"] == [119, 341, 587, 708, 781, 917, 986]
    text = render_inspect(result)
    assert "INVALID: 992 of 1000 rows valid" in text
    assert "no_final_reply: 7 (line 119, 341, 587, 708, 781, 917, 986)" in text
    assert "messages_turns:" in text and "example 1:" in text


def test_inspect_with_another_kind(shared_data):
    result = inspect(str(shared_data / "hh-rlhf/helpful-rejection-sampled/test.jsonl"), "prompt")
    assert result["kind"] == "prompt" and result["rows_out"] == 2749 and result["valid"]
    # helpful-base has prompts with two assistant turns in a row: invalid as prompts too.
    result = inspect(str(shared_data / "hh-rlhf/helpful-base/test.jsonl"), "prompt")
    assert result["problems"]["repeated_role"]["count"] == 6


def test_render_inspect_shows_policy_drops_and_notes(shared_data):
    text = render_inspect(inspect(str(shared_data / "alpaca_eval/alpaca_eval_gpt4__minichat-3b.json")))
    assert text.startswith(f"{shared_data}/alpaca_eval/alpaca_eval_gpt4__minichat-3b.json: pairwise_judged (auto")
    assert "dropped by policy: no_judgment_0 5, no_judgment_null 1" in text
    assert "ignored columns: annotator, dataset" in text


def test_convert_writes_canonical_jsonl_and_report(tmp_path, shared_data):
    out = tmp_path / "out" / "alpaca.jsonl"
    report = convert(str(shared_data / "llama-factory/alpaca_en_demo.json"), "sft", str(out))
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == report.rows_out == 699
    assert json.loads(lines[0])["messages"][0]["role"] == "user"
    saved = json.loads(report_path(out).read_text(encoding="utf-8"))
    assert report_path(out).name == "alpaca.report.json"
    assert saved["format"] == "alpaca" and saved["rows_out"] == 699
    assert saved["notes"] == {"noinput_placeholder_kept": 1}
    # The converted file reads back as itself (openai_chat) with the same rows.
    assert load_source(str(out), "sft").rows == [json.loads(line) for line in lines]


def test_convert_raises_before_writing_and_skips_when_asked(tmp_path, shared_data):
    source = str(shared_data / "hh-rlhf/helpful-online/test.jsonl")
    out = tmp_path / "hh.jsonl"
    with pytest.raises(InvalidRowsError):
        convert(source, "preference", str(out))
    assert not out.exists() and not report_path(out).exists()
    report = convert(source, "preference", str(out), on_error="skip")
    saved = json.loads(report_path(out).read_text(encoding="utf-8"))
    assert saved["skipped"] == report.skipped and sum(saved["skipped"].values()) == 8
    assert saved["problems"]["no_final_reply"]["first"][0].startswith(f"{source}:786: ")
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1129
    assert "skipped 8:" in report.summary()
