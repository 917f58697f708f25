"""SFT stage end to end on a tiny model: weights move, outputs reload and generate, LoRA leaves the base alone,
resume continues from the last checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from align import config, stages
from align.errors import ConfigError
from align.observe import tracking
from align.stages import fused_head
from align.stages.sft import SFTConfig

ROWS = [
    [("what is the capital of france?", "paris is the capital of france")],
    [("write a short poem about the sea", "the sea and the sky"), ("thanks", "goodbye")],
    [("hello", "hello, how can i help?")],
    [("one two three", "four five six")],
    [("the quick brown fox", "jumps over the lazy dog")],
    [("is the cat on the mat?", "yes the cat sat on the mat")],
    [("good answer or bad answer?", "a good answer")],
    [("say seven", "seven"), ("say eight", "eight")],
]


@pytest.fixture
def sft_data(tmp_path):
    path = tmp_path / "train.jsonl"
    with path.open("w") as f:
        for turns in ROWS:
            messages = []
            for user, assistant in turns:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def make_cfg(tmp_path, model_dir, data, *overrides) -> SFTConfig:
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(data)], "eval_fraction": 0.25},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 2, "learning_rate": 1e-2,
                      "max_length": 64, "save_steps": 2, "num_threads": 1, "lr_scheduler": "constant"}}
    return config.load_config(SFTConfig, None, list(overrides), base=base)


def weights(path):
    return load_file(str(path))


def test_sft_full_finetune_moves_weights_and_reloads(tmp_path, tiny_model_dir, sft_data, monkeypatch):
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    cfg = make_cfg(tmp_path, tiny_model_dir, sft_data)
    result = stages.run("sft", cfg)
    out = result.output_dir
    assert trl_utils._use_triton is fused_head._compact_everywhere_but_compiled, "the build applies fused_head"

    assert result.metrics["steps"] == 3
    assert math.isfinite(result.metrics["train_loss"])
    assert math.isfinite(result.metrics["eval_loss"])
    before, after = weights(tiny_model_dir / "model.safetensors"), weights(out / "model.safetensors")
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == [], f"parameters that did not move: {unchanged}"

    assert config.load_config(SFTConfig, out / "config.yaml") == cfg
    logged = tracking.read_metrics(out)
    assert any("loss" in m for m in logged) and any("eval_loss" in m for m in logged)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["steps"] == 3 and summary["data"]["train_rows"] == 6

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > ids["input_ids"].shape[1]


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
