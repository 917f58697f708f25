"""Property tests: malformed rows never escape as an uncaught exception.

Whatever the rows, loading gives either valid canonical rows plus counted skips/drops ("skip"), or one
InvalidRowsError that names each bad row by file and line ("raise"); format detection gives a DataFormatError.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_formats import FORMATS, DataFormatError, InvalidRowsError, Source, load_source
from data_formats.kinds import VALIDATORS

# FUZZ_EXAMPLES=600 for a deeper run (about 45 s); the default keeps the suite fast.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True, allow_infinity=True) | text
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                        max_leaves=8)
roles = st.sampled_from(["system", "user", "assistant", "tool", "human", "gpt", "function_call", "observation",
                         "bot", ""])
role_messages = st.lists(st.fixed_dictionaries({"role": roles, "content": text | anything}), max_size=4)
tagged_messages = st.lists(st.fixed_dictionaries({"from": roles, "value": text | anything}), max_size=4)
transcripts = st.lists(st.tuples(st.sampled_from(["\n\nHuman:", "\n\nAssistant:", "Human:", "\n\n"]), text),
                       max_size=4).map(lambda turns: "".join(a + b for a, b in turns))
completions = st.lists(st.fixed_dictionaries({}, optional={"text": text | anything, "response": text,
                                                           "score": st.integers(0, 3) | anything,
                                                           "overall_score": st.floats()}), max_size=4)
plausible = text | transcripts | role_messages | tagged_messages | anything | completions | st.floats(0, 3)
COLUMNS = sorted({column for fmt in FORMATS.values() for column in fmt.columns} | {"label", "tools"})
rows = st.dictionaries(st.sampled_from(COLUMNS), plausible, max_size=6) | anything

# Well-formed values per column, so that fuzzing also reaches conversion and validation, not only missing fields.
words = st.text("ab \n", min_size=1, max_size=6).filter(lambda w: w.strip() != "" or len(w) == 1)
pairs = st.lists(st.tuples(words, words), min_size=1, max_size=3)


def chat(user_role: str, assistant_role: str, role_key: str, content_key: str):
    return pairs.map(lambda turns: [{role_key: role, content_key: content} for u, a in turns
                                    for role, content in ((user_role, u), (assistant_role, a))])


openai_chat_messages = chat("user", "assistant", "role", "content")
GOOD = {
    "text": words, "history": st.lists(st.lists(words, min_size=2, max_size=2), max_size=2),
    "instances": st.lists(st.fixed_dictionaries({"input": words, "output": words}), max_size=2),
    "conversations": chat("human", "gpt", "from", "value"), "messages": openai_chat_messages,
    # Both sides of a pair share the dialogue before their final replies (st.shared: same draw within an example).
    "transcript": st.builds(lambda dialogue, last, reply: f"{dialogue}\n\nHuman: {last}\n\nAssistant: {reply}",
                            st.shared(pairs.map(lambda turns: "".join(f"\n\nHuman: {u}\n\nAssistant: {a}"
                                                                      for u, a in turns[1:])), key="dialogue"),
                            st.shared(words, key="last"), words),
    "label": st.booleans(), "preference": st.sampled_from([1.0, 2.0, 1.2, 1.8, 1.5, 0.0, None]),
    "completions": st.lists(st.fixed_dictionaries({"text": words, "score": st.integers(0, 3)}), max_size=4),
    "tools": st.sampled_from(["[]", '[{"name": "f"}]', [], [{"name": "g"}], "not json"]),
    "reply": words | words.map(lambda w: [{"role": "assistant", "content": w}]),
    "tagged_reply": st.fixed_dictionaries({"from": st.sampled_from(["gpt", "human"]), "value": words}),
}
COLUMN_VALUES = {"history": "history", "instances": "instances", "conversations": "conversations",
                 "messages": "messages", "label": "label", "preference": "preference", "completions": "completions",
                 "tools": "tools", "completion": "reply", "prompt": "reply"}
GOOD["prompt_conversations"] = st.builds(lambda turns, last: [*turns, {"from": "human", "value": last}],
                                        chat("human", "gpt", "from", "value"), words)
OVERRIDES = {"hh_rlhf": {"chosen": "transcript", "rejected": "transcript"},
             "sharegpt_preference": {"chosen": "tagged_reply", "rejected": "tagged_reply",
                                     "conversations": "prompt_conversations"}}


def mostly(usual, rare):
    """`usual` nine times in ten (st.one_of would not weight repeated branches)."""
    return st.integers(0, 9).flatmap(lambda i: usual if i else rare)


def format_rows(name: str):
    fmt = FORMATS[name]

    def value(column: str):
        default = "reply" if column in ("chosen", "rejected") else COLUMN_VALUES.get(column, "text")
        kind = OVERRIDES.get(name, {}).get(column, default)
        return mostly(GOOD[kind], plausible)

    row = st.fixed_dictionaries({c: value(c) for c in fmt.required},
                                optional={c: value(c) for c in fmt.columns if c not in fmt.required})
    return mostly(row, rows)


def write(directory, values: list) -> str:
    path = directory / "fuzz.jsonl"
    path.write_text("".join(json.dumps(value) + "\n" for value in values), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def check_outcome(path: str, source: Source, kind: str, n: int) -> None:
    loaded = load_source(source, kind, on_error="skip")
    report = loaded.report
    assert report.rows_in == n == report.rows_converted + len(report.problems) + sum(report.dropped.values())
    assert all(1 <= problem.row <= n and problem.reason for problem in report.problems)
    for row in loaded.rows:
        VALIDATORS[kind](row)
        json.dumps(row)
    try:
        load_source(source, kind)
    except InvalidRowsError as error:
        assert report.problems and f"{path}:{report.problems[0].row}: " in str(error)
    else:
        assert not report.problems


@pytest.mark.parametrize("name", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_any_rows_given_format(fuzz_dir, name, data):
    values = data.draw(st.lists(format_rows(name), min_size=1, max_size=5))
    path = write(fuzz_dir, values)
    for kind in FORMATS[name].kinds:
        check_outcome(path, Source(path, format=name), kind, len(values))


@FUZZ
@given(values=st.lists(rows, min_size=1, max_size=6), kind=st.sampled_from(["sft", "preference", "kto", "prompt"]))
def test_any_rows_auto_detected(fuzz_dir, values, kind):
    path = write(fuzz_dir, values)
    try:
        check_outcome(path, Source(path), kind, len(values))
    except InvalidRowsError:
        raise
    except DataFormatError as error:
        assert path in str(error)


@FUZZ
@given(lines=st.lists(st.binary(max_size=30) | text.map(str.encode), min_size=1, max_size=6))
def test_garbage_lines(fuzz_dir, lines):
    path = fuzz_dir / "garbage.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    try:
        loaded = load_source(Source(str(path), format="alpaca"), "sft", on_error="skip")
    except DataFormatError:
        raise AssertionError("row-level garbage must not be a file-level error") from None
    assert all(problem.row <= len(lines) for problem in loaded.report.problems)


@FUZZ
@given(preference=st.floats(allow_nan=True) | st.integers(-5, 5) | st.none() | text | st.booleans())
def test_pairwise_preference_values_are_a_result_a_drop_or_a_problem(fuzz_dir, preference):
    path = write(fuzz_dir, [{"instruction": "Q", "output_1": "a", "output_2": "b", "preference": preference}])
    report = load_source(path, "preference", on_error="skip").report
    outcome = report.rows_out + len(report.problems) + sum(report.dropped.values())
    assert outcome == 1
    if report.rows_out:
        assert isinstance(preference, (int, float)) and not isinstance(preference, bool)
        assert math.isfinite(preference) and 1 <= preference <= 2 and preference != 1.5
