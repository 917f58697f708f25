"""Row-level outcomes: a problem (invalid row) or a drop (valid row left out by a documented policy).

Formatters raise these; the loader adds the file and row number and counts them by reason.
"""

from __future__ import annotations

# Problem reasons: stable keys, used in reports and in tests.
INVALID_JSON = "invalid_json"
BAD_CSV_ROW = "bad_csv_row"
NESTED_TOO_DEEP = "nested_too_deep"
DUPLICATE_KEY = "duplicate_key"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_VALUE = "bad_value"
EMPTY_CONTENT = "empty_content"
EMPTY_PROMPT = "empty_prompt"
UNKNOWN_ROLE = "unknown_role"
REPEATED_ROLE = "repeated_role"
ROLE_ORDER = "role_order"
NO_FINAL_REPLY = "no_final_reply"
EMPTY_FINAL_REPLY = "empty_final_reply"
CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
PROMPT_MISMATCH = "prompt_mismatch"

REASONS: dict[str, str] = {
    INVALID_JSON: "the line is not valid JSON",
    BAD_CSV_ROW: "the CSV record has a different number of fields than the header",
    NESTED_TOO_DEEP: "the row nests arrays or objects deeper than the JSON parser goes",
    DUPLICATE_KEY: "a JSON object has the same key twice (which value is meant is unknown)",
    NOT_AN_OBJECT: "the row is not a JSON object",
    MISSING_FIELD: "a required field is missing or null",
    WRONG_TYPE: "a field has the wrong type (e.g. a number where text is expected)",
    BAD_VALUE: "a field has a value outside what the format allows",
    EMPTY_CONTENT: "a message or required text is empty",
    EMPTY_PROMPT: "the prompt has no messages",
    UNKNOWN_ROLE: "a message has a role that is not system, user, assistant or tool (after mapping)",
    REPEATED_ROLE: "two turns in a row have the same role (they are not merged: that would be a silent fix-up)",
    ROLE_ORDER: "turns are out of order (system not first, assistant before user, tool not after assistant...)",
    NO_FINAL_REPLY: "the conversation or reply does not end on an assistant turn",
    EMPTY_FINAL_REPLY: "the final assistant reply is empty",
    CHOSEN_EQUALS_REJECTED: "chosen and rejected are identical",
    PROMPT_MISMATCH: "chosen and rejected do not share the same prompt",
}


class RowProblem(Exception):
    """The row is invalid: `reason` is one of REASONS, `detail` says what exactly is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RowDropped(Exception):
    """The row is valid but a documented policy leaves it out (a judge tie, no judgment); counted by reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
