"""prepare(): length filter, dedup, train/eval split and weighted mixing, each seeded and counted."""

from __future__ import annotations

from collections import Counter

import pytest

from data_formats import DataFormatError, Source, prepare


def sft_rows(prefix: str, n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{prefix} question {i}"},
                          {"role": "assistant", "content": f"{prefix} answer {i}"}]} for i in range(n)]


def tag(row: dict) -> str:
    return row["messages"][0]["content"]


@pytest.fixture
def two_sources(write_jsonl):
    return str(write_jsonl(sft_rows("a", 10), "a.jsonl")), str(write_jsonl(sft_rows("b", 4), "b.jsonl"))


def test_weight_one_keeps_every_row_once_in_file_order(two_sources):
    a, b = two_sources
    prepared = prepare([a, b], "sft")
    assert [tag(r) for r in prepared.train] == [f"a question {i}" for i in range(10)] + [
        f"b question {i}" for i in range(4)]
    assert prepared.eval == []
    assert prepared.report.train_rows == 14


def test_weights_scale_rows_per_source(two_sources):
    a, b = two_sources
    prepared = prepare([Source(a, weight=0.5), Source(b, weight=2.5)], "sft", seed=3)
    counts = Counter(tag(r)[0] for r in prepared.train)
    assert counts == {"a": 5, "b": 10}  # 0.5 x 10; 2 x 4 + round(0.5 x 4)
    b_counts = Counter(tag(r) for r in prepared.train if tag(r).startswith("b"))
    assert sorted(b_counts.values()) == [2, 2, 3, 3]  # every row twice, then a sampled half once more
    a_rows = [tag(r) for r in prepared.train if tag(r).startswith("a")]
    assert a_rows == sorted(set(a_rows), key=lambda t: int(t.split()[-1]))  # a sample, in file order
    assert prepared.report.mixing[0] == {"path": a, "weight": 0.5, "rows": 10, "eval_rows": 0, "train_rows": 5}
    again = prepare([Source(a, weight=0.5), Source(b, weight=2.5)], "sft", seed=3)
    assert again.train == prepared.train
    others = {tuple(tag(r) for r in prepare([Source(a, weight=0.5)], "sft", seed=s).train) for s in range(6)}
    assert len(others) > 1


def test_eval_fraction_holds_out_per_source(two_sources):
    a, b = two_sources
    prepared = prepare([a, b], "sft", eval_fraction=0.2, seed=1)
    assert Counter(tag(r)[0] for r in prepared.eval) == {"a": 2, "b": 1}  # round(2.0), round(0.8)
    assert len(prepared.train) == 11
    train, held = {tag(r) for r in prepared.train}, {tag(r) for r in prepared.eval}
    assert not train & held and len(train | held) == 14
    assert prepare([a, b], "sft", eval_fraction=0.2, seed=1).eval == prepared.eval


def test_eval_fraction_keeps_at_least_one_row_each_side(write_jsonl):
    prepared = prepare([str(write_jsonl(sft_rows("t", 2)))], "sft", eval_fraction=0.01)
    assert (len(prepared.train), len(prepared.eval)) == (1, 1)


def test_explicit_eval_sources(two_sources, write_jsonl):
    a, b = two_sources
    prepared = prepare([a], "sft", eval=[b])
    assert [tag(r)[0] for r in prepared.eval] == ["b"] * 4 and len(prepared.train) == 10
    with pytest.raises(DataFormatError, match="either eval sources or eval_fraction"):
        prepare([a], "sft", eval=[b], eval_fraction=0.1)
    with pytest.raises(DataFormatError, match="weights apply to train sources only"):
        prepare([a], "sft", eval=[Source(b, weight=2.0)])


def test_dedup_within_train_within_eval_and_across(write_jsonl):
    rows = sft_rows("d", 3)
    train = str(write_jsonl([rows[0], rows[1], rows[0], rows[2]], "train.jsonl"))
    other = str(write_jsonl([rows[1], rows[1]], "other.jsonl"))
    held = str(write_jsonl([rows[2], rows[2]], "eval.jsonl"))
    prepared = prepare([train, other], "sft", eval=[held], dedup=True)
    assert [tag(r) for r in prepared.train] == ["d question 0", "d question 1"]
    assert [tag(r) for r in prepared.eval] == ["d question 2"]
    assert prepared.report.removed == {"duplicate_in_eval": 1, "duplicate_in_train": 3, "train_row_in_eval": 1}
    assert len(prepare([train, other], "sft").train) == 6  # no dedup unless asked


def test_bad_arguments_and_no_rows_left(write_jsonl, two_sources):
    with pytest.raises(DataFormatError, match="at least one train source"):
        prepare([], "sft")
    with pytest.raises(DataFormatError, match=r"eval_fraction must be in \[0, 1\)"):
        prepare([two_sources[0]], "sft", eval_fraction=1.0)
    bad = str(write_jsonl([{"instruction": "x", "output": ""}]))
    with pytest.raises(DataFormatError, match="no train rows left"):
        prepare([bad], "sft", on_error="skip")


def test_report_round_trips_to_dict_and_summary(two_sources):
    import json

    prepared = prepare([two_sources[0]], "sft", eval_fraction=0.1, dedup=True, seed=7)
    data = json.loads(json.dumps(prepared.report.to_dict()))
    assert data["train_rows"] == 9 and data["eval_rows"] == 1 and data["seed"] == 7
    assert data["sources"][0]["format"] == "openai_chat"
    assert "9 train rows, 1 eval rows (seed 7)" in prepared.report.summary()
