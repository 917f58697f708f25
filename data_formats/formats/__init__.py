"""The source formats, by name. Each module converts one source layout into canonical rows."""

from __future__ import annotations

from data_formats.formats import (
    alpaca,
    hh_rlhf,
    kto,
    openai_chat,
    paired_answers,
    pairwise_judged,
    scored_completions,
    sharegpt,
    sharegpt_preference,
    trl_preference,
    trl_prompt,
    trl_prompt_completion,
    trl_unpaired,
)
from data_formats.formats.spec import Format

FORMATS: dict[str, Format] = {
    module.FORMAT.name: module.FORMAT
    for module in (
        alpaca,
        sharegpt,
        openai_chat,
        trl_prompt_completion,
        hh_rlhf,
        trl_preference,
        sharegpt_preference,
        paired_answers,
        pairwise_judged,
        scored_completions,
        kto,
        trl_unpaired,
        trl_prompt,
    )
}

__all__ = ["FORMATS", "Format"]
