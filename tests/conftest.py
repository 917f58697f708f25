"""Shared fixtures: offline environment, tiny Llama models saved like hub checkpoints (built by tests/tiny.py).

torch is imported inside the fixtures only, so torch-free tests (data formats) stay fast to collect.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny import build_tiny_tokenizer, llama_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# huggingface_hub and datasets read these once, on first import. A test module that imports trl's trainer utilities
# while pytest collects would otherwise fix them to online, and a hub lookup then waits for the network to time out.
os.environ.update(OFFLINE)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path / "align-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread; two threads on a shared 2-core machine wait on each other.
    Stages that set threads from their config are restored here after the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama causal LM (hidden 32) plus its tokenizer, saved like a hub checkpoint."""
    import torch
    from transformers import LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama sequence classifier with one label (a reward model), plus tokenizer."""
    import torch
    from transformers import LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-reward")
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(llama_config(tokenizer, num_labels=1))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
