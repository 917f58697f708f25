"""HH-RLHF transcripts: prompt extraction by common prefix, including the 15 pairs where the naive split fails."""

from __future__ import annotations

import json

import pytest

from data_formats import load_source
from data_formats.formats import hh_rlhf
from data_formats.problems import PROMPT_MISMATCH, RowProblem

SUBSETS = {"helpful-base": 7, "harmless-base": 5, "helpful-online": 0, "helpful-rejection-sampled": 3}
A = "\n\nAssistant:"


def naive_prompt(text: str) -> str:
    return text[: text.rfind(A)]


def naive_failures(path) -> list[tuple[int, dict]]:
    """(line, row) of the pairs whose chosen and rejected disagree on the prompt under the naive last-marker split."""
    rows = [(n, json.loads(line)) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    return [(n, r) for n, r in rows if naive_prompt(r["chosen"]) != naive_prompt(r["rejected"])
            and not (r["chosen"].startswith(r["rejected"]) or r["rejected"].startswith(r["chosen"]))]


@pytest.mark.parametrize(("subset", "expected"), SUBSETS.items())
def test_naive_split_failures_get_the_shared_prompt(shared_data, subset, expected):
    failures = naive_failures(shared_data / "hh-rlhf" / subset / "test.jsonl")
    assert len(failures) == expected
    for _, row in failures:
        (pair,) = hh_rlhf.convert(row)
        prompt_text = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                              for m in pair["prompt"])
        assert pair["prompt"][-1]["role"] == "user"
        # The prompt is the dialogue both transcripts share, and each reply is the rest of its own transcript.
        for side in ("chosen", "rejected"):
            assert _squash(row[side]).startswith(_squash(prompt_text))
            assert _squash(row[side]) == _squash(prompt_text + "".join(
                f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in pair[side]))
        assert naive_prompt(row["chosen"]) != naive_prompt(row["rejected"])


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_reply_that_keeps_writing_turns_does_not_move_the_prompt(shared_data):
    lines = (shared_data / "hh-rlhf/helpful-base/test.jsonl").read_text(encoding="utf-8").splitlines()
    (pair,) = hh_rlhf.convert(json.loads(lines[919]))  # line 920
    assert pair["prompt"] == [{"role": "user", "content": "How much do solar panels cost?"}]
    assert pair["chosen"][0]["content"] == "Umm. Just a second..."
    assert pair["chosen"][1]["content"].startswith("A solar panel should cost")
    assert pair["rejected"][0]["content"].startswith("To get a price from a single solar panel manufacturer")


def test_pairs_parting_inside_a_human_turn_have_different_prompts():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a joke\n\nAssistant: Knock knock",
           "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a story\n\nAssistant: Once upon a time"}
    with pytest.raises(RowProblem) as raised:
        hh_rlhf.convert(row)
    assert raised.value.reason == PROMPT_MISMATCH


def test_multi_turn_transcript_and_marker_spacing():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant:  Hello!\n\nHuman:\nHow are you?\n\nAssistant: Fine, thanks. ",
           "rejected": "\n\nHuman: Hi\n\nAssistant:  Hello!\n\nHuman:\nHow are you?\n\nAssistant: Go away."}
    (pair,) = hh_rlhf.convert(row)
    assert pair == {
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "How are you?"}],
        "chosen": [{"role": "assistant", "content": "Fine, thanks."}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }


def test_inline_markers_stay_text_and_strict_prefixes_are_valid(write_jsonl):
    path = write_jsonl([
        {"chosen": "\n\nHuman: Say hi. Human: please\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi. Human: "
                                                                                   "please\n\nAssistant: Hi! Bye!"},
    ])
    (row,) = load_source(str(path), "preference").rows
    assert row["prompt"] == [{"role": "user", "content": "Say hi. Human: please"}]
    assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("Hi!", "Hi! Bye!")


def test_common_prefix_length():
    assert hh_rlhf.common_prefix_length("abcdef", "abcxyz") == 3
    assert hh_rlhf.common_prefix_length("abc", "abc") == 3
    assert hh_rlhf.common_prefix_length("", "abc") == 0
    assert hh_rlhf.common_prefix_length("abc", "ab") == 2


def test_shared_human_turn_after_the_last_shared_reply_is_a_prompt_mismatch():
    # chosen stops on a Human turn that rejected shares and then answers: the two replies have different prompts.
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye",
           "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: See you"}
    with pytest.raises(RowProblem) as raised:
        hh_rlhf.convert(row)
    assert raised.value.reason == PROMPT_MISMATCH
