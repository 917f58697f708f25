"""A row nested deeper than the JSON parser goes, or an object with a repeated key, is a row problem (file, row,
reason), skipped and counted under on_error="skip", in JSONL and in a whole-file JSON array alike."""

from __future__ import annotations

import json

import pytest

from data_formats import InvalidRowsError, Source, load_source

GOOD = '{"instruction": "Say hi.", "output": "Hi!"}'
DEEP = '{"instruction": "a", "output": "b", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
TWICE = '{"instruction": "a", "output": "first", "output": "second"}'
ROWS = (GOOD, DEEP, GOOD, TWICE, GOOD)


def test_jsonl_nested_and_duplicate_rows_are_row_problems(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(ROWS) + "\n", encoding="utf-8")
    loaded = load_source(str(path), "sft", on_error="skip")
    assert [(p.row, p.reason) for p in loaded.report.problems] == [(2, "nested_too_deep"), (4, "duplicate_key")]
    assert "'output'" in loaded.report.problems[1].detail
    assert (loaded.report.rows_in, loaded.report.rows_out) == (5, 3)
    with pytest.raises(InvalidRowsError) as raised:
        load_source(str(path), "sft")
    assert f"{path}:2: nested_too_deep" in str(raised.value) and f"{path}:4: duplicate_key" in str(raised.value)


def test_json_array_nested_and_duplicate_items_are_row_problems(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join(ROWS) + "\n]\n", encoding="utf-8")
    loaded = load_source(str(path), "sft", on_error="skip")
    assert [(p.row, p.unit, p.reason) for p in loaded.report.problems] == [(2, "item", "nested_too_deep"),
                                                                           (4, "item", "duplicate_key")]
    assert [row["messages"][-1]["content"] for row in loaded.rows] == ["Hi!"] * 3


def test_json_single_object_with_a_repeated_key(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(TWICE, encoding="utf-8")
    problems = load_source(Source(str(path), format="alpaca"), "sft", on_error="skip").report.problems
    assert [(p.row, p.reason) for p in problems] == [(1, "duplicate_key")]
    path.write_text(f"{TWICE}\n{GOOD}\n", encoding="utf-8")  # JSON lines in a .json file
    problems = load_source(str(path), "sft", on_error="skip").report.problems
    assert [(p.row, p.unit, p.reason) for p in problems] == [(1, "line", "duplicate_key")]


def test_brackets_and_keys_inside_strings_do_not_confuse_the_skip(tmp_path):
    tricky = json.dumps({"instruction": 'say "output": 1, ]} [{ \\"', "output": "ok"})
    path = tmp_path / "rows.json"
    path.write_text("[" + ",".join([TWICE.replace('"a"', '"a ]}\\""'), tricky, DEEP, tricky]) + "]", encoding="utf-8")
    loaded = load_source(str(path), "sft", on_error="skip")
    assert [(p.row, p.reason) for p in loaded.report.problems] == [(1, "duplicate_key"), (3, "nested_too_deep")]
    assert len(loaded.rows) == 2
