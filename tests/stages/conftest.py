"""What the stage tests share: preference pairs in the tiny tokenizer's vocabulary (reward, DPO) and a longer SFT
config for the tests that follow a run over many steps (freezing, early stopping)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import CONVERSATIONS, PAIRS, write_chats, write_pairs


@pytest.fixture
def pair_files(tmp_path) -> tuple[Path, Path]:
    """(train, eval): 8 training pairs and 4 held-out pairs."""
    return write_pairs(tmp_path / "train.jsonl", PAIRS[:8]), write_pairs(tmp_path / "eval.jsonl", PAIRS[8:])


@pytest.fixture
def long_sft_cfg(tmp_path, tiny_model_dir):
    """long_sft_cfg(*overrides) -> SFTConfig: full fine-tuning of the tiny model on CONVERSATIONS x 4 (20 rows),
    batch 2, lr 1e-2 constant, every checkpoint kept, output in tmp_path/out."""
    from align import config
    from align.stages.sft import SFTConfig

    data = write_chats(tmp_path / "train.jsonl", CONVERSATIONS * 4)
    base = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(data)]},
            "train": {"output_dir": str(tmp_path / "out"), "batch_size": 2, "max_length": 64, "learning_rate": 1e-2,
                      "lr_scheduler": "constant", "num_threads": 1, "save_total_limit": 20}}
    return lambda *overrides: config.load_config(SFTConfig, None, list(overrides), base=base)
