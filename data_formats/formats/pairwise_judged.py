"""Judged pairs (AlpacaEval annotations: `instruction`, `output_1`, `output_2`, `preference`) -> preference.

`preference` in [1, 2] says which output the judge preferred: above 1.5 -> output_2 is chosen, below 1.5 ->
output_1. Left out by policy and counted (not errors): exactly 1.5 (`tie`), 0 (`no_judgment_0`), null
(`no_judgment_null`), and identical outputs (`identical_outputs`). Any other value is a BAD_VALUE problem.
"""

from __future__ import annotations

import math

from data_formats.fields import json_type, required_text
from data_formats.formats.spec import Format
from data_formats.messages import message
from data_formats.problems import BAD_VALUE, MISSING_FIELD, WRONG_TYPE, RowDropped, RowProblem


def matches(row: dict) -> bool:
    return "instruction" in row and "output_1" in row and "output_2" in row and "preference" in row


def convert(row: dict) -> list[dict]:
    instruction = required_text(row, "instruction")
    output_1 = required_text(row, "output_1")
    output_2 = required_text(row, "output_2")
    if "preference" not in row:
        raise RowProblem(MISSING_FIELD, "missing field 'preference'")
    preference = row["preference"]
    if preference is None:
        raise RowDropped("no_judgment_null")
    if type(preference) not in (int, float):
        raise RowProblem(WRONG_TYPE, f"'preference' must be a number, got {json_type(preference)}")
    if preference == 0:
        raise RowDropped("no_judgment_0")
    if not (math.isfinite(preference) and 1 <= preference <= 2):
        raise RowProblem(BAD_VALUE, f"'preference' must be in [1, 2] (or 0 / null for no judgment), got {preference}")
    if preference == 1.5:
        raise RowDropped("tie")
    if output_1 == output_2:
        raise RowDropped("identical_outputs")
    chosen, rejected = (output_2, output_1) if preference > 1.5 else (output_1, output_2)
    return [{"prompt": [message("user", instruction)], "chosen": [message("assistant", chosen)],
             "rejected": [message("assistant", rejected)]}]


FORMAT = Format(
    name="pairwise_judged",
    kind="preference",
    columns=("instruction", "output_1", "output_2", "preference"),
    required=("instruction", "output_1", "output_2", "preference"),
    detected_by="`instruction` + `output_1` + `output_2` + `preference`",
    example='{"instruction": "Name a fruit.", "output_1": "Apple.", "output_2": "Rock.", "preference": 1.0}',
    matches=matches,
    convert=convert,
)
