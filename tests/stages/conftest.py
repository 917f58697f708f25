"""Preference pairs in the tiny tokenizer's vocabulary, written as canonical JSONL for the reward and DPO stages."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import PAIRS, write_pairs


@pytest.fixture
def pair_files(tmp_path) -> tuple[Path, Path]:
    """(train, eval): 8 training pairs and 4 held-out pairs."""
    return write_pairs(tmp_path / "train.jsonl", PAIRS[:8]), write_pairs(tmp_path / "eval.jsonl", PAIRS[8:])
