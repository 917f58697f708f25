"""Alpaca rows -> sft messages.

`instruction` (+ `input`, joined by a blank line) is the user turn and `output` the assistant reply. Optional
`system` (a system turn) and `history` ([[user, assistant], ...] turns before it), as in LLaMA-Factory. Self-Instruct
seed tasks (`instances: [{input, output}]` instead of `output`) give one row per instance. Other columns (such as
Alpaca's rendered `text`) are ignored. Placeholders like "< noinput >" and template slots like "{{name}}" are kept
as text and counted as notes: rewriting them would be a silent fix-up.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_formats.fields import json_type, optional_text, required_list, required_text
from data_formats.formats.spec import Format
from data_formats.messages import message
from data_formats.problems import EMPTY_CONTENT, WRONG_TYPE, RowProblem


def matches(row: dict) -> bool:
    return "instruction" in row and ("output" in row or "instances" in row)


def convert(row: dict) -> list[dict]:
    instruction = required_text(row, "instruction")
    head = _system_and_history(row)
    if "output" not in row and "instances" in row:
        instances = required_list(row, "instances")
        if not instances:
            raise RowProblem(EMPTY_CONTENT, "'instances' is empty")
        rows = []
        for i, instance in enumerate(instances):
            if type(instance) is not dict:
                raise RowProblem(WRONG_TYPE, f"instances[{i}] must be an object, got {json_type(instance)}")
            rows.append(_sft_row(head, instruction, optional_text(instance, "input", f"instances[{i}].input"),
                                 required_text(instance, "output", f"instances[{i}].output")))
        return rows
    return [_sft_row(head, instruction, optional_text(row, "input"), required_text(row, "output"))]


def _sft_row(head: list[dict], instruction: str, input_text: str, output: str) -> dict:
    user = f"{instruction}\n\n{input_text}" if input_text else instruction
    return {"messages": [*head, message("user", user), message("assistant", output)]}


def _system_and_history(row: dict) -> list[dict]:
    head = []
    system = optional_text(row, "system")
    if system:
        head.append(message("system", system))
    history = row.get("history")
    if history is None:
        return head
    if type(history) is not list:
        raise RowProblem(WRONG_TYPE, f"'history' must be an array of [user, assistant] pairs, got {json_type(history)}")
    for i, pair in enumerate(history):
        if type(pair) is not list or len(pair) != 2:
            raise RowProblem(WRONG_TYPE, f"history[{i}] must be a [user, assistant] pair")
        head.append(message("user", pair[0]))
        head.append(message("assistant", pair[1]))
    return head


def notes(row: dict) -> Iterator[str]:
    input_text = row.get("input")
    if type(input_text) is str and input_text.startswith("<") and input_text.replace(" ", "") == "<noinput>":
        yield "noinput_placeholder_kept"
    output = row.get("output")
    if type(output) is str:
        if output.startswith("<nooutput>"):
            yield "nooutput_placeholder_kept"
        if "{{" in output:
            yield "template_slot_kept"


FORMAT = Format(
    name="alpaca",
    kind="sft",
    columns=("instruction", "input", "output", "system", "history", "instances"),
    required=("instruction", "output"),
    detected_by="`instruction` + `output` (or `instances`)",
    example='{"instruction": "Name a color.", "input": "", "output": "Blue."}',
    matches=matches,
    convert=convert,
    notes=notes,
)
