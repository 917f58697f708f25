"""File types and row numbers: every problem points at the line (JSONL, CSV) or position (JSON) a person looks up."""

from __future__ import annotations

import json

import pytest

from data_formats import DataFormatError, InvalidRowsError, Source, load_source

GOOD = {"instruction": "Say hi.", "output": "Hi!"}


def test_jsonl_line_numbers_count_blank_and_invalid_lines(write_jsonl):
    path = write_jsonl([GOOD, "", GOOD, '{"instruction": "broken", ', GOOD, {"instruction": "x", "output": ""},
                        "   ", "[1, 2]", GOOD])
    loaded = load_source(str(path), "sft", on_error="skip")
    assert [(p.row, p.reason) for p in loaded.report.problems] == [(4, "invalid_json"), (6, "empty_final_reply"),
                                                                   (8, "not_an_object")]
    assert loaded.report.blank_lines == 2
    assert (loaded.report.rows_in, loaded.report.rows_out) == (7, 4)
    with pytest.raises(InvalidRowsError) as raised:
        load_source(str(path), "sft")
    message = str(raised.value)
    assert f"{path}:4: invalid_json" in message and f"{path}:6: empty_final_reply" in message
    assert "3 of 7 rows are invalid" in message and 'on_error="skip"' in message


def test_json_list_positions(write_json):
    path = write_json([GOOD, GOOD, {"instruction": "x"} | {"output": 5}, GOOD, "text"])
    problems = load_source(str(path), "sft", on_error="skip").report.problems
    assert [(p.row, p.unit, p.reason) for p in problems] == [(3, "item", "wrong_type"), (5, "item", "not_an_object")]
    assert str(problems[0]).startswith(f"{path} item 3: wrong_type: 'output' must be a string")


def test_json_single_object_and_jsonl_named_json(tmp_path, write_json):
    assert len(load_source(str(write_json(GOOD)), "sft").rows) == 1
    path = tmp_path / "lines.json"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    loaded = load_source(str(path), "sft")
    assert len(loaded.rows) == 2


def test_invalid_json_file_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": }\n]\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.json:3:\d+: invalid JSON"):
        load_source(str(path), "sft")


def test_bom_and_non_utf8(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert len(load_source(str(path), "sft").rows) == 1
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"instruction": "caf\xe9", "output": "x"}'.encode("latin-1")
                    + b"\n")
    report = load_source(str(bad), "sft", on_error="skip").report
    assert [(p.row, p.reason) for p in report.problems] == [(2, "invalid_json")]


def test_csv_rows_by_line_including_multiline_cells(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('instruction,input,output\nSay hi.,,Hi!\n"Two\nlines",,""\n\nName a color.,,Blue.\nextra,,a,b\n',
                    encoding="utf-8")
    loaded = load_source(str(path), "sft", on_error="skip")
    assert [row["messages"][-1]["content"] for row in loaded.rows] == ["Hi!", "Blue."]
    assert [(p.row, p.reason) for p in loaded.report.problems] == [(3, "empty_final_reply"), (7, "bad_csv_row")]


def test_parquet(tmp_path):
    import pyarrow
    import pyarrow.parquet

    path = tmp_path / "data.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist([GOOD, {"instruction": "x", "output": None}]), path)
    loaded = load_source(str(path), "sft", on_error="skip")
    assert len(loaded.rows) == 1
    assert [(p.row, p.unit, p.reason) for p in loaded.report.problems] == [(2, "row", "missing_field")]


def test_missing_file_directory_and_unsupported_type(tmp_path):
    with pytest.raises(DataFormatError, match="file not found"):
        load_source(str(tmp_path / "nope.jsonl"), "sft")
    with pytest.raises(DataFormatError, match="is a directory"):
        load_source(str(tmp_path), "sft")
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(DataFormatError, match=r"unsupported file type '\.txt'"):
        load_source(str(tmp_path / "data.txt"), "sft")
    with pytest.raises(DataFormatError, match="split='test' applies to hub datasets only"):
        (tmp_path / "d.jsonl").write_text(json.dumps(GOOD) + "\n")
        load_source(Source(str(tmp_path / "d.jsonl"), split="test"), "sft")


def test_hub_id_offline_is_a_clear_error():
    # The autouse fixture in tests/conftest.py sets HF_DATASETS_OFFLINE=1.
    with pytest.raises(DataFormatError, match=r"not a local file, and loading it as a Hugging Face hub dataset "
                                              r"\(split 'train'\) failed") as raised:
        load_source("no-such-owner-xyz/no-such-dataset-xyz", "preference")
    assert raised.value.__cause__ is not None


def test_empty_file_is_a_clear_error(write_jsonl):
    with pytest.raises(DataFormatError, match="no JSON object rows"):
        load_source(str(write_jsonl([])), "sft")
