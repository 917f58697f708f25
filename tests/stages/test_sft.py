"""SFT stage end to end on a tiny model: weights move, outputs reload and fit the training replies better than the
starting model, LoRA leaves the base alone, resume continues from the last checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny import CHATS, messages, write_chats

from align import config, stages
from align.errors import ConfigError
from align.observe import tracking
from align.stages.sft import SFTConfig


@pytest.fixture
def sft_data(tmp_path):
    return write_chats(tmp_path / "train.jsonl", CHATS)


def make_cfg(tmp_path, model_dir, data, *overrides) -> SFTConfig:
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(data)], "eval_fraction": 0.25},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 2, "learning_rate": 1e-2,
                      "max_length": 64, "save_steps": 2, "num_threads": 1, "lr_scheduler": "constant"}}
    return config.load_config(SFTConfig, None, list(overrides), base=base)


def weights(path):
    return load_file(str(path))


# The finished run `sft_run` (tests/conftest.py): full fine-tuning, 4 steps, eval on 2 held-out conversations.

def test_sft_moves_every_weight_through_the_fused_head(sft_run, tiny_model_dir):
    assert sft_run.seen["fused_head"], "the build applies align.stages.fused_head"
    before, after = weights(tiny_model_dir / "model.safetensors"), weights(sft_run.out / "model.safetensors")
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == [], f"parameters that did not move: {unchanged}"


def test_sft_logs_losses_and_writes_its_config_and_summary(sft_run):
    metrics = sft_run.result.metrics
    assert metrics["steps"] == 4 and math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    assert config.load_config(SFTConfig, sft_run.out / "config.yaml") == sft_run.cfg
    logged = tracking.read_metrics(sft_run.out)
    assert [m["step"] for m in logged if "loss" in m] == [1, 2, 3, 4]
    assert any("eval_loss" in m for m in logged)
    summary = sft_run.summary()
    assert summary["metrics"]["steps"] == 4 and summary["data"]["train_rows"] == 6
    assert summary["data"]["eval_rows"] == 2


def test_sft_output_reloads_and_fits_its_training_replies_better(sft_run, tiny_model_dir):
    """The saved model loads with plain transformers and gives its training conversations a lower loss than the
    starting model does (a model saved before training, or not saved at all, would not)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_run.out)
    ids = [tokenizer.apply_chat_template(messages(turns), tokenize=True, return_dict=True)["input_ids"]
           for turns in CHATS[:6]]

    def loss(model_dir) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        with torch.no_grad():
            return sum(model(torch.tensor([row]), labels=torch.tensor([row])).loss.item() for row in ids) / len(ids)

    assert loss(sft_run.out) < loss(tiny_model_dir) - 0.1


def test_sft_lora_trains_adapter_only_and_saves_merged(tmp_path, tiny_model_dir, sft_data):
    cfg = make_cfg(tmp_path, tiny_model_dir, sft_data, "model.lora.enabled=true", "model.lora.rank=4",
                   "save_merged=true", "data.eval_fraction=0")
    result = stages.run("sft", cfg)
    out = result.output_dir
    assert (out / "adapter_config.json").is_file()
    adapter = weights(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero; training must move it"

    base_before = weights(tiny_model_dir / "model.safetensors")
    merged = weights(out / "merged" / "model.safetensors")
    # The base checkpoint on disk is untouched, and merging changed the adapted projections only.
    assert all(torch.equal(base_before[k], weights(tiny_model_dir / "model.safetensors")[k]) for k in base_before)
    changed = {k for k in base_before if not torch.equal(base_before[k], merged[k])}
    assert changed and all("proj" in k for k in changed)
    assert not any("lora" in k for k in merged)


def test_sft_resume_continues_from_last_checkpoint(tmp_path, tiny_model_dir, sft_data):
    cfg = make_cfg(tmp_path, tiny_model_dir, sft_data, "train.max_steps=2", "data.eval_fraction=0")
    stages.run("sft", cfg)
    out = tmp_path / "out"
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()

    with pytest.raises(ConfigError, match="already holds a run"):
        stages.run("sft", make_cfg(tmp_path, tiny_model_dir, sft_data, "train.max_steps=4", "data.eval_fraction=0"))

    # A checkpoint cut off mid-write is set aside, not resumed from.
    (out / "checkpoint-3").mkdir()
    resumed = stages.run("sft", make_cfg(tmp_path, tiny_model_dir, sft_data, "train.max_steps=4",
                                         "data.eval_fraction=0", "train.resume=true"))
    assert resumed.metrics["steps"] == 4
    assert (out / "incomplete-checkpoint-3").is_dir()
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    steps_logged = [m["step"] for m in tracking.read_metrics(out) if "loss" in m]
    assert steps_logged == [1, 2, 3, 4], "the resumed run starts at step 3, not from scratch"


def test_sft_wandb_offline_run_on_disk(tmp_path, tiny_model_dir, sft_data, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(tmp_path, tiny_model_dir, sft_data, "train.max_steps=2", "data.eval_fraction=0",
                   "tracking.backend=wandb", "tracking.project=align-tests", "tracking.group=g1")
    result = stages.run("sft", cfg)
    runs = list((result.output_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert result.notes["wandb_sync"] == f"wandb sync {runs[0]}"
    run_id = (result.output_dir / "wandb_run_id").read_text().strip()
    assert runs[0].name.endswith(run_id)
    from wandb_records import finished_run_file, summarize

    logged = summarize(finished_run_file(result.output_dir))
    assert "loss" in logged["history"] or "train/loss" in logged["history"]
    assert logged["group"] == "g1" and logged["job_type"] == "sft"
    assert {"model", "train", "data"} <= logged["config"]
