"""Scored multi-completion rows (UltraFeedback style) -> preference, by binarizing the scores.

Row: a prompt (`prompt`, or `instruction` as in raw UltraFeedback; text or messages) and `completions`, a list of
objects with the text in `text` or `response` and the score in `score` or `overall_score` (first key found wins).
Chosen = the top-scored completion. Rejected, by `Source.pair_rule`:
  worst  - the lowest score (the first one listed on a tie);
  second - the highest score below the top (the first one listed on a tie);
  random - a uniform pick among those scored below the top, seeded by the prompt text (reproducible, order-free).
Left out by policy and counted: several completions share the top score (`tie_at_top`), fewer than two completions
(`fewer_than_2_completions`).
"""

from __future__ import annotations

import math
import random

from data_formats.fields import json_type, required_list
from data_formats.formats.spec import Converter, Format
from data_formats.messages import as_messages, message
from data_formats.problems import BAD_VALUE, MISSING_FIELD, WRONG_TYPE, RowDropped, RowProblem

PAIR_RULES = ("worst", "second", "random")
TEXT_KEYS = ("text", "response")
SCORE_KEYS = ("score", "overall_score")


def matches(row: dict) -> bool:
    return "completions" in row and ("prompt" in row or "instruction" in row)


def converter(rule: str) -> Converter:
    if rule not in PAIR_RULES:
        raise ValueError(f"pair_rule must be one of {', '.join(PAIR_RULES)}, got {rule!r}")
    return lambda row: _convert(row, rule)


def _convert(row: dict, rule: str) -> list[dict]:
    prompt_key = "prompt" if "prompt" in row else "instruction"
    prompt = as_messages(row.get(prompt_key), prompt_key, "user")
    scored = [_scored(item, i) for i, item in enumerate(required_list(row, "completions"))]
    if len(scored) < 2:
        raise RowDropped("fewer_than_2_completions")
    best = max(score for score, _ in scored)
    top = [text for score, text in scored if score == best]
    if len(top) > 1:
        raise RowDropped("tie_at_top")
    below = [(score, text) for score, text in scored if score < best]
    if rule == "worst":
        rejected = min(below, key=lambda pair: pair[0])[1]
    elif rule == "second":
        rejected = max(below, key=lambda pair: pair[0])[1]
    else:
        rejected = random.Random(repr(prompt)).choice(below)[1]
    return [{"prompt": prompt, "chosen": [message("assistant", top[0])], "rejected": [message("assistant", rejected)]}]


def _scored(item: object, i: int) -> tuple[float, str]:
    if type(item) is not dict:
        raise RowProblem(WRONG_TYPE, f"completions[{i}] must be an object, got {json_type(item)}")
    text_key = next((key for key in TEXT_KEYS if key in item), None)
    score_key = next((key for key in SCORE_KEYS if key in item), None)
    if text_key is None or score_key is None:
        wanted = " or ".join(TEXT_KEYS) if text_key is None else " or ".join(SCORE_KEYS)
        raise RowProblem(MISSING_FIELD, f"completions[{i}] has no {wanted} (has: {', '.join(map(str, item))})")
    text, score = item[text_key], item[score_key]
    if type(text) is not str:
        raise RowProblem(WRONG_TYPE, f"completions[{i}].{text_key} must be a string, got {json_type(text)}")
    if type(score) not in (int, float):
        raise RowProblem(WRONG_TYPE, f"completions[{i}].{score_key} must be a number, got {json_type(score)}")
    if not math.isfinite(score):
        raise RowProblem(BAD_VALUE, f"completions[{i}].{score_key} is {score}")
    return score, text


FORMAT = Format(
    name="scored_completions",
    kind="preference",
    columns=("prompt", "instruction", "completions"),
    required=("prompt", "completions"),
    detected_by="`completions` (list with text + score) + `prompt` or `instruction`",
    example='{"prompt": "Name a fruit.", "completions": [{"text": "Apple.", "score": 9}, '
            '{"text": "Rock.", "score": 2}]}',
    matches=matches,
    convert=converter("worst"),
    converter_for_rule=converter,
)
