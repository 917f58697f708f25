"""The persistent DPO reference log-prob cache: a second run hits it without running the reference and trains the
same; new reference weights, data or max_length miss it; a beta, loss or LoRA sweep trial hits it; the stored values
are the reference's log-probs; a failed write leaves no entry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trl
from tiny import PAIRS, write_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer

from align import config, stages
from align.errors import ConfigError
from align.observe import tracking
from align.stages import dpo, ref_cache
from align.stages.dpo import DPOConfig


def make_cfg(tmp_path, model_dir, train, *overrides, out="out") -> DPOConfig:
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(train)]},
            "train": {"output_dir": str(tmp_path / out), "max_steps": 3, "batch_size": 2, "learning_rate": 1e-2,
                      "max_length": 64, "save_steps": 100, "num_threads": 1, "lr_scheduler": "constant"},
            "beta": 0.5, "precompute_ref_log_probs": True}
    return config.load_config(DPOConfig, None, list(overrides), base=base)


def build(cfg: DPOConfig):
    """Build the trainer (which precomputes or reads the reference log-probs) without training."""
    return dpo.build(cfg, tracking.Tracker(cfg.tracking, cfg.train.output_dir, stage="dpo", run_config={}))


@pytest.fixture
def train_file(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", PAIRS[:8])


@pytest.fixture
def reference_calls(monkeypatch):
    """Counts batches the reference model scores (TRL's only entry to the reference forward pass)."""
    calls = []
    original = trl.DPOTrainer.compute_ref_log_probs

    def counting(self, model, inputs):
        calls.append(len(inputs["input_ids"]))
        return original(self, model, inputs)

    monkeypatch.setattr(trl.DPOTrainer, "compute_ref_log_probs", counting)
    return calls


def entries() -> list[str]:
    root = ref_cache.cache_root()
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def independent_logps(model_dir, row: dict, side: str) -> float:
    """Sum of the model's log-probs of the reply tokens of prompt + `side`, computed directly with transformers."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    template = {"tokenize": True, "return_dict": True}
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, **template)["input_ids"]
    full = tokenizer.apply_chat_template(row["prompt"] + row[side], **template)["input_ids"]
    assert full[:len(prompt)] == prompt
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0, :-1]
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(full[1:])[:, None])[:, 0]
    return token_logps[len(prompt) - 1:].sum().item()


def test_second_run_hits_the_cache_skips_the_reference_and_trains_the_same(tmp_path, tiny_model_dir, train_file,
                                                                          reference_calls):
    first = stages.run("dpo", make_cfg(tmp_path, tiny_model_dir, train_file, out="first"))
    assert sum(reference_calls) == 2 * 8, "the first run scores every pair's chosen and rejected reply once"
    summary = json.loads((first.output_dir / "summary.json").read_text())
    report = summary["reference_log_probs"]["train"]
    assert report["cache"] == "miss" and entries() == [report["key"]]
    entry = ref_cache.cache_root() / report["key"]
    written = (entry / ref_cache.VALUES_FILE).stat().st_mtime_ns

    reference_calls.clear()
    second = stages.run("dpo", make_cfg(tmp_path, tiny_model_dir, train_file, out="second"))
    assert reference_calls == [], "a cache hit must not run the reference model"
    summary = json.loads((second.output_dir / "summary.json").read_text())
    hit = summary["reference_log_probs"]["train"]
    assert hit["cache"] == "hit" and hit["key"] == report["key"]
    assert (entry / ref_cache.VALUES_FILE).stat().st_mtime_ns == written, "a hit does not rewrite the entry"

    losses = [[m["loss"] for m in tracking.read_metrics(r.output_dir) if "loss" in m] for r in (first, second)]
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_cached_values_are_the_reference_log_probs_in_dataset_order(tmp_path, tiny_model_dir, train_file):
    trainer = build(make_cfg(tmp_path, tiny_model_dir, train_file)).trainer
    data = trainer.train_dataset
    stored = np.load(ref_cache.cache_root() / entries()[0] / ref_cache.VALUES_FILE)
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(data["prompt"], data["chosen"],
                                                                             data["rejected"])]
    for side in ("chosen", "rejected"):
        expected = [independent_logps(tiny_model_dir, row, side) for row in rows]
        assert stored[f"ref_{side}_logps"] == pytest.approx(expected, abs=1e-4)
        assert data[f"ref_{side}_logps"] == pytest.approx(expected, abs=1e-4)
    assert trainer.ref_model is None


@pytest.fixture
def changed_model_dir(tmp_path, tiny_model_dir):
    """The tiny model with its final norm scaled by 1.5: another reference."""
    out = tmp_path / "changed-model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_an_explicit_reference_is_scored_then_freed(tmp_path, tiny_model_dir, changed_model_dir, train_file):
    trainer = build(make_cfg(tmp_path, tiny_model_dir, train_file, f"reference={changed_model_dir}")).trainer
    assert trainer.ref_model is None, "its log-probs are in the dataset; the reference need not stay in memory"
    row = trainer.train_dataset[0]
    assert row["ref_chosen_logps"] == pytest.approx(independent_logps(changed_model_dir, row, "chosen"), abs=1e-4)
    assert row["ref_chosen_logps"] != pytest.approx(independent_logps(tiny_model_dir, row, "chosen"), abs=1e-4)


def test_new_reference_weights_data_or_max_length_miss(tmp_path, tiny_model_dir, changed_model_dir, train_file,
                                                       reference_calls):
    assert build(make_cfg(tmp_path, tiny_model_dir, train_file)).summary["reference_log_probs"]["train"]["cache"] \
        == "miss"
    changed = changed_model_dir
    other_data = write_pairs(tmp_path / "other.jsonl", PAIRS[:7] + [("say nine", "nine", "two")])
    for case, cfg in {
        "reference weights": make_cfg(tmp_path, changed, train_file),
        "data": make_cfg(tmp_path, tiny_model_dir, other_data),
        "max_length": make_cfg(tmp_path, tiny_model_dir, train_file, "train.max_length=60"),
    }.items():
        reference_calls.clear()
        before = entries()
        report = build(cfg).summary["reference_log_probs"]["train"]
        assert report["cache"] == "miss", case
        assert reference_calls, case
        assert entries() == sorted(before + [report["key"]]), f"{case}: a new entry beside the old ones"


def test_sweep_trials_over_beta_loss_or_lora_hit(tmp_path, tiny_model_dir, train_file, reference_calls):
    build(make_cfg(tmp_path, tiny_model_dir, train_file))
    first = entries()
    reference_calls.clear()
    for trial in (["beta=0.1"], ["loss_type=[ipo]", "train.learning_rate=1e-3"],
                  ["model.lora.enabled=true", "model.lora.rank=4"]):
        assert build(make_cfg(tmp_path, tiny_model_dir, train_file, *trial)).summary["reference_log_probs"][
            "train"]["cache"] == "hit", trial
    assert reference_calls == [] and entries() == first


def test_ref_cache_off_computes_and_stores_nothing(tmp_path, tiny_model_dir, train_file, reference_calls):
    for _ in range(2):
        report = build(make_cfg(tmp_path, tiny_model_dir, train_file, "ref_cache=false")).summary
        assert report["reference_log_probs"]["train"]["cache"] == "off"
    assert sum(reference_calls) == 2 * 2 * 8 and entries() == []


def test_failed_write_leaves_no_entry(tmp_path, tiny_model_dir, train_file, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="disk full"):
        patched.setattr(np, "savez", crash)
        build(make_cfg(tmp_path, tiny_model_dir, train_file))
    assert entries() == [], "neither a half-written entry nor its staging dir is left"
    assert build(make_cfg(tmp_path, tiny_model_dir, train_file)).summary["reference_log_probs"]["train"]["cache"] \
        == "miss"


def test_precompute_rejects_a_moving_reference(tmp_path, tiny_model_dir, train_file):
    with pytest.raises(ConfigError, match="trainer_overrides.sync_ref_model: moves the reference"):
        make_cfg(tmp_path, tiny_model_dir, train_file, "trainer_overrides={sync_ref_model: true}")
