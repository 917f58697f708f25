"""align.data.fit_to_length: the one length filter of every stage (cut or drop, counted drops, stage reasons)."""

from __future__ import annotations

from collections import Counter

from align import data


def encode(row: list[int]) -> data.Encoding:
    return {"input_ids": row, "labels": row}


ROWS = [[1, 2, 3], [1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]


def test_over_long_rows_keep_their_start_or_their_end():
    for keep, expected in (("start", [1, 2, 3, 4]), ("end", [3, 4, 5, 6])):
        dropped: Counter = Counter()
        fitted = data.fit_to_length(ROWS, encode, data.LengthLimit(4, drop_long=False, keep=keep), dropped=dropped,
                                    split="train")
        assert [row for row, _ in fitted] == ROWS and not dropped
        assert fitted[1][1] == {"input_ids": expected, "labels": expected}
        assert fitted[0][1]["input_ids"] == [1, 2, 3]


def test_drop_long_counts_each_drop_under_its_split_and_reason():
    dropped = Counter({"eval: something else": 1})
    fitted = data.fit_to_length(ROWS, encode, data.LengthLimit(4, drop_long=True), dropped=dropped, split="train")
    assert [row for row, _ in fitted] == [[1, 2, 3]]
    assert dropped == {"train: longer than train.max_length=4": 2, "eval: something else": 1}
    named = Counter()
    data.fit_to_length(ROWS, encode, data.LengthLimit(4, drop_long=True, too_long="prompt over 4 tokens"),
                       dropped=named, split="train")
    assert named == {"train: prompt over 4 tokens": 2}


def test_a_stage_reason_is_judged_on_the_row_as_trained_and_comes_first():
    def starts_with_seven(ids: data.Encoding) -> str | None:
        return "nothing to train on" if ids["input_ids"][0] == 7 else None

    for drop_long in (False, True):
        dropped: Counter = Counter()
        fitted = data.fit_to_length(ROWS, encode, data.LengthLimit(4, drop_long), dropped=dropped, split="eval",
                                    unusable=starts_with_seven)
        assert [row for row, _ in fitted] == ([[1, 2, 3], [1, 2, 3, 4, 5, 6]] if not drop_long else [[1, 2, 3]])
        assert dropped["eval: nothing to train on"] == 1


def test_sft_rows_cut_to_no_trained_token_are_dropped():
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}, {"input_ids": [1, 2], "labels": [1, 2]}]
    dropped: Counter = Counter()
    kept = data.tokenize_all(rows, dict, max_length=2, drop_long=False, dropped=dropped, split="train")
    assert kept == [{"input_ids": [1, 2], "labels": [1, 2]}]
    assert dropped == {"train: no trained tokens left within train.max_length=2": 1}
