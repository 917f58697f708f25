"""Shared fixtures: offline environment, tiny Llama models saved like hub checkpoints (built by tests/tiny.py), and
finished SFT and DPO runs that many tests read (tests/finished_runs.py).

torch is imported inside the fixtures only, so torch-free tests (data formats) stay fast to collect.
"""

from __future__ import annotations

import os
from pathlib import Path

import finished_runs
import pytest
from tiny import CHATS, PAIRS, build_tiny_tokenizer, llama_config, write_chats, write_pairs

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# huggingface_hub and datasets read these once, on first import. A test module that imports trl's trainer utilities
# while pytest collects would otherwise fix them to online, and a hub lookup then waits for the network to time out.
os.environ.update(finished_runs.OFFLINE)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    finished_runs.set_test_env(monkeypatch, tmp_path)


@pytest.fixture(autouse=True)
def _no_stage_plots(request, monkeypatch):
    """Stages skip their plots/ (finished_runs.skip_stage_plots) unless the test asks for `stage_plots`."""
    if "stage_plots" not in request.fixturenames:
        finished_runs.skip_stage_plots(monkeypatch)


@pytest.fixture
def stage_plots():
    """Stages in this test draw their plots/ (see _no_stage_plots)."""


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


@pytest.fixture(scope="module")
def tiny_frozen_lm(tiny_model_dir):
    """(tokenizer, the tiny causal LM loaded by align in fp32 and frozen), for tests that only read it."""
    from align import models
    from align.sections import ModelConfig

    cfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="fp32")
    return models.load_tokenizer(cfg), models.frozen(models.load_causal_lm(cfg))


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


SAMPLING = {"completions_every": 2, "completions_prompts": 2, "completions_max_new_tokens": 4}
"""Replies sampled before training and every 2 steps, as the finished runs do."""
TRAIN = {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-2, "max_length": 64, "save_steps": 2, "num_threads": 1,
         "lr_scheduler": "constant"}


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, tiny_model_dir) -> finished_runs.FinishedRun:
    """SFT, full fine-tuning: 4 steps on CHATS[:6], evaluated on CHATS[6:], replies sampled every 2 steps, plots drawn.
    Tests only read it."""
    from align import config, stages
    from align.stages.sft import SFTConfig

    tmp = tmp_path_factory.mktemp("sft-run")
    inputs = {"train": write_chats(tmp / "train.jsonl", CHATS[:6]), "eval": write_chats(tmp / "eval.jsonl", CHATS[6:])}
    with finished_runs.isolated_env(tmp, plots=True) as monkeypatch:
        trl_utils = finished_runs.watch_fused_head(monkeypatch)
        cfg = config.load_config(SFTConfig, base={
            "model": {"name_or_path": str(tiny_model_dir)},
            "data": {"train": [str(inputs["train"])], "eval": [str(inputs["eval"])]},
            "train": {**TRAIN, "output_dir": str(tmp / "out")}, "tracking": SAMPLING})
        result = stages.run("sft", cfg)
        return finished_runs.FinishedRun(cfg, result, inputs,
                                         seen={"fused_head": finished_runs.fused_head_applied(trl_utils)})


@pytest.fixture(scope="session")
def dpo_run(tmp_path_factory, tiny_model_dir) -> finished_runs.FinishedRun:
    """DPO, full fine-tuning against a frozen copy of the starting policy: 4 steps on PAIRS[:8], evaluated on
    PAIRS[8:], replies sampled every 2 steps. `seen` keeps the built trainer and the reference's weights before
    training. Tests only read it."""
    from align import config, stages
    from align.stages import dpo
    from align.stages.dpo import DPOConfig

    tmp = tmp_path_factory.mktemp("dpo-run")
    inputs = {"train": write_pairs(tmp / "train.jsonl", PAIRS[:8]), "eval": write_pairs(tmp / "eval.jsonl", PAIRS[8:])}
    seen = {}
    with finished_runs.isolated_env(tmp, plots=False) as monkeypatch:
        trl_utils = finished_runs.watch_fused_head(monkeypatch)
        real_build = dpo.build

        def build(cfg, tracker):
            built = real_build(cfg, tracker)
            seen["trainer"] = built.trainer
            seen["ref_before"] = {k: v.clone() for k, v in built.trainer.ref_model.state_dict().items()}
            seen["fused_head"] = finished_runs.fused_head_applied(trl_utils)
            return built

        monkeypatch.setattr(dpo, "build", build)
        cfg = config.load_config(DPOConfig, base={
            "model": {"name_or_path": str(tiny_model_dir)},
            "data": {"train": [str(inputs["train"])], "eval": [str(inputs["eval"])]},
            "train": {**TRAIN, "output_dir": str(tmp / "out")}, "tracking": SAMPLING, "beta": 0.5})
        return finished_runs.FinishedRun(cfg, stages.run("dpo", cfg), inputs, seen)
