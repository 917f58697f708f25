"""Data files of a few preference pairs / prompts, and a 'trained' policy whose reference is the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plain_torch import PAIRS, message


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": message("user", p), "chosen": message("assistant", c),
                                        "rejected": message("assistant", r)}) + "\n" for p, c, r in PAIRS))
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": message("user", p)}) + "\n" for p, _, _ in PAIRS))
    return path


@pytest.fixture(scope="session")
def policy_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its weights perturbed (seeded): a 'trained' policy whose reference is tiny_model_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-policy")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out
