"""DPO stage on a tiny model: the policy moves and the reference does not, LoRA keeps one model in memory, metrics
reach metrics.jsonl, too-long prompts are counted, and an sft LoRA adapter is merged or trained further."""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from align import config, models, stages
from align.errors import ConfigError, ModelError
from align.observe import tracking
from align.sections import ModelConfig
from align.stages import dpo
from align.stages.dpo import DPOConfig

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected")


def make_cfg(tmp_path, model_dir, pair_files, *overrides) -> DPOConfig:
    train, held_out = pair_files
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(train)], "eval": [str(held_out)]},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 2, "learning_rate": 1e-2,
                      "max_length": 64, "save_steps": 2, "num_threads": 1, "lr_scheduler": "constant"},
            "beta": 0.5}
    return config.load_config(DPOConfig, None, list(overrides), base=base)


@pytest.fixture
def spy_build(monkeypatch):
    """Keep the built trainer and a copy of the reference's weights taken before training."""
    seen = {}
    original = dpo.build

    def spy(cfg, tracker):
        built = original(cfg, tracker)
        seen["trainer"] = built.trainer
        ref = built.trainer.ref_model
        seen["ref_before"] = None if ref is None else {k: v.clone() for k, v in ref.state_dict().items()}
        return built

    monkeypatch.setattr(dpo, "build", spy)
    return seen


# The finished run `dpo_run` (tests/conftest.py): full fine-tuning, 4 steps, eval on PAIRS[8:].

def test_dpo_moves_the_policy_and_not_the_reference(dpo_run, tiny_model_dir):
    assert dpo_run.seen["fused_head"], "the build applies align.stages.fused_head"
    ref = dpo_run.seen["trainer"].ref_model
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    after = ref.state_dict()
    assert all(torch.equal(dpo_run.seen["ref_before"][k], after[k]) for k in after), "the reference must not change"
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = load_file(str(dpo_run.out / "model.safetensors"))
    assert [k for k in before if torch.equal(before[k], trained[k])] == []


def test_dpo_logs_pair_metrics_in_training_and_evaluation(dpo_run):
    metrics = dpo_run.result.metrics
    assert metrics["steps"] == 4 and math.isfinite(metrics["train_loss"])
    logged = tracking.read_metrics(dpo_run.out)
    for key in PAIR_METRICS:
        assert any(key in m for m in logged), key
        assert any(f"eval_{key}" in m for m in logged), f"eval_{key}"
    assert 0.0 <= metrics["eval_rewards/accuracies"] <= 1.0
    assert dpo_run.summary()["reference"].startswith("frozen copy of the starting policy")
    assert config.load_config(DPOConfig, dpo_run.out / "config.yaml") == dpo_run.cfg


def test_dpo_held_out_accuracy_beside_its_baselines(dpo_run, tiny_model_dir):
    """The saved policy's implicit-reward ranking against the reference, beside the baselines, recomputed here."""
    from align.eval import scoring

    out = dpo_run.out
    tokenizer = models.load_tokenizer(ModelConfig(name_or_path=str(out)))
    pairs = [json.loads(line) for line in dpo_run.inputs["eval"].read_text().splitlines()]
    prompts = [p["prompt"] for p in pairs]
    margin = {}
    for name, path in (("policy", out), ("reference", tiny_model_dir)):
        model = models.load_causal_lm(ModelConfig(name_or_path=str(path))).eval()
        margin[name] = [c - r for c, r in zip(*(scoring.reply_logps(model, tokenizer, prompts, [p[side] for p in pairs],
                                                                    8) for side in ("chosen", "rejected")))]
    implicit = [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(margin["policy"], margin["reference"])]
    table = dpo_run.summary()["held_out"]["accuracy"]["all"]
    assert table["dpo implicit reward"]["accuracy"] == sum(implicit) / 4
    assert table["starting policy log-prob margin"]["accuracy"] == sum(m > 0 for m in margin["reference"]) / 4
    assert table["longer reply"]["accuracy"] == 3.5 / 4  # as in test_reward: the same 4 eval pairs


def _decoder_layers() -> int:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    gc.collect()
    return sum(isinstance(o, LlamaDecoderLayer) for o in gc.get_objects())


@pytest.mark.slow  # 2-4 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_dpo_lora_reference_is_the_policy_with_adapter_disabled(tmp_path, tiny_model_dir, pair_files):
    cfg = make_cfg(tmp_path, tiny_model_dir, pair_files, "model.lora.enabled=true", "model.lora.rank=4",
                   "train.max_steps=2")
    layers_before = _decoder_layers()
    built = dpo.build(cfg, tracking.Tracker(cfg.tracking, tmp_path / "out", stage="dpo", run_config={}))
    trainer = built.trainer
    assert trainer.ref_model is None
    assert _decoder_layers() - layers_before == trainer.model.config.num_hidden_layers == 2
    assert "disabled" in built.summary["reference"]

    base = {k: v.clone() for k, v in trainer.model.state_dict().items() if "lora" not in k}
    trainer.train()
    state = trainer.model.state_dict()
    assert all(torch.equal(base[k], state[k]) for k in base), "LoRA leaves the base (= the reference) untouched"
    assert any(not torch.all(v == 0) for k, v in state.items() if "lora_B" in k)


def test_dpo_counts_pairs_whose_prompt_fills_max_length(tmp_path, tiny_model_dir, pair_files):
    tokenizer = models.load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)))
    rows = [json.loads(line) for line in pair_files[0].read_text().splitlines()]
    template = {"add_generation_prompt": True, "return_dict": True}
    lengths = [len(tokenizer.apply_chat_template(r["prompt"], **template)["input_ids"]) for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]
    cfg = make_cfg(tmp_path, tiny_model_dir, pair_files, f"train.max_length={limit}", "train.max_steps=1",
                   "data.eval=[]")
    result = stages.run("dpo", cfg)
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["dropped"] == {f"train: prompt alone fills train.max_length={limit}":
                                  sum(n >= limit for n in lengths)}


@pytest.fixture
def sft_adapter_dir(tmp_path, tiny_model_dir):
    """An sft LoRA output: adapter (B made non-zero, as after training) + tokenizer, base = the tiny model."""
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                       task_type="CAUSAL_LM"))
    torch.manual_seed(3)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    out = tmp_path / "sft"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_dpo_merges_sft_adapter_and_stacks_a_fresh_one(tmp_path, sft_adapter_dir, pair_files):
    cfg = make_cfg(tmp_path, sft_adapter_dir, pair_files, "model.lora.enabled=true", "model.lora.rank=2",
                   "train.max_steps=2")
    result = stages.run("dpo", cfg)
    adapter_config = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(sft_adapter_dir.resolve())

    # The DPO output loads back as base + sft + dpo; with the DPO adapter's B at zero it would equal the sft merge.
    merged_sft = models.load_causal_lm(ModelConfig(name_or_path=str(sft_adapter_dir)))
    dpo_model = models.load_causal_lm(ModelConfig(name_or_path=str(result.output_dir)))
    ids = [5, 6, 7, 8]
    assert not torch.allclose(_logits(merged_sft, ids), _logits(dpo_model, ids))
    tiny = models.load_causal_lm(ModelConfig(name_or_path=adapter_config_base(sft_adapter_dir)))
    assert not torch.allclose(_logits(tiny, ids), _logits(merged_sft, ids)), "the sft adapter was merged"


def test_dpo_merges_sft_adapter_for_full_finetuning(tmp_path, sft_adapter_dir, pair_files, spy_build):
    result = stages.run("dpo", make_cfg(tmp_path, sft_adapter_dir, pair_files, "train.max_steps=2"))
    merged_sft = models.load_causal_lm(ModelConfig(name_or_path=str(sft_adapter_dir)))
    ids = [5, 6, 7, 8]
    assert torch.allclose(_logits(spy_build["trainer"].ref_model, ids), _logits(merged_sft, ids), atol=1e-5)
    trained = load_file(str(result.output_dir / "model.safetensors"))
    start = merged_sft.state_dict()
    assert [k for k in trained if torch.equal(trained[k], start[k])] == [], "every merged weight trains"


def adapter_config_base(adapter_dir) -> str:
    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_dpo_continues_sft_adapter_against_frozen_merged_reference(tmp_path, sft_adapter_dir, pair_files, spy_build):
    cfg = make_cfg(tmp_path, sft_adapter_dir, pair_files, "sft_adapter=continue", "train.max_steps=2")
    result = stages.run("dpo", cfg)
    trainer = spy_build["trainer"]
    merged_sft = models.load_causal_lm(ModelConfig(name_or_path=str(sft_adapter_dir)))
    ids = [5, 6, 7, 8]
    assert torch.allclose(_logits(trainer.ref_model, ids), _logits(merged_sft, ids), atol=1e-5)
    assert all(torch.equal(spy_build["ref_before"][k], v) for k, v in trainer.ref_model.state_dict().items())

    sft_weights = load_file(str(sft_adapter_dir / "adapter_model.safetensors"))
    dpo_weights = load_file(str(result.output_dir / "adapter_model.safetensors"))
    assert sft_weights.keys() == dpo_weights.keys()
    assert any(not torch.equal(sft_weights[k], dpo_weights[k]) for k in sft_weights), "the sft adapter trained on"


def reference_logps(model, row: dict, side: str) -> float:
    """Sum of `model`'s log-probs of the reply tokens of a tokenized DPO row (prompt_ids + chosen_ids or
    rejected_ids): a plain forward pass, not TRL's."""
    ids = row["prompt_ids"] + row[f"{side}_ids"]
    token_logps = torch.log_softmax(_logits(model, ids)[0, :-1], dim=-1)[torch.arange(len(ids) - 1), ids[1:]]
    return token_logps[len(row["prompt_ids"]) - 1:].sum().item()


def test_dpo_trains_on_precomputed_reference_log_probs(tmp_path, tiny_model_dir, pair_files, spy_build):
    """No reference model while training: every train and eval pair carries the log-probs the reference gives its
    replies, which a forward pass of the starting model reproduces; two losses train on them."""
    result = stages.run("dpo", make_cfg(tmp_path, tiny_model_dir, pair_files, "precompute_ref_log_probs=true",
                                        "train.max_steps=2", "loss_type=[sigmoid,sft]", "loss_weights=[1.0,0.5]"))
    trainer = spy_build["trainer"]
    assert trainer.ref_model is None
    reference = models.load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir))).eval()
    for dataset, pairs in ((trainer.train_dataset, 8), (trainer.eval_dataset, 4)):
        assert len(dataset) == pairs
        for side in ("chosen", "rejected"):
            expected = [reference_logps(reference, row, side) for row in dataset]
            assert dataset[f"ref_{side}_logps"] == pytest.approx(expected, abs=1e-4), side
    assert math.isfinite(result.metrics["eval_rewards/margins"])


def test_dpo_config_errors(tmp_path, tiny_model_dir, pair_files):
    with pytest.raises(ConfigError, match="loss_type\\[0\\]: unknown DPO loss 'sigmod'. Did you mean 'sigmoid'"):
        make_cfg(tmp_path, tiny_model_dir, pair_files, "loss_type=[sigmod]")
    with pytest.raises(ConfigError, match="loss_weights: needs one weight per loss_type"):
        make_cfg(tmp_path, tiny_model_dir, pair_files, "loss_type=[sigmoid,ipo]", "loss_weights=[1.0]")
    with pytest.raises(ConfigError, match="exo_pair loss needs it > 0"):
        make_cfg(tmp_path, tiny_model_dir, pair_files, "loss_type=[exo_pair]")
    with pytest.raises(ConfigError, match="set by align; use beta"):
        make_cfg(tmp_path, tiny_model_dir, pair_files, "trainer_overrides={beta: 0.2}")
    with pytest.raises(ConfigError, match="sft_adapter: continue needs model.name_or_path to be a LoRA adapter"):
        stages.run("dpo", make_cfg(tmp_path, tiny_model_dir, pair_files, "sft_adapter=continue"))
    with pytest.raises(ModelError, match="does not exist"):
        stages.run("dpo", make_cfg(tmp_path, tiny_model_dir, pair_files, f"reference={tmp_path}/no-such-model",
                                   "train.overwrite=true"))


def test_dpo_continue_precomputes_and_caches_the_sft_reference(tmp_path, sft_adapter_dir, pair_files):
    """With sft_adapter=continue the reference is TRL's frozen copy of the sft adapter, so the precomputed (and
    cached) log-probs are those of the merged sft model, not of the base."""
    import numpy as np

    from align.stages import ref_cache

    cfg = make_cfg(tmp_path, sft_adapter_dir, pair_files, "sft_adapter=continue", "precompute_ref_log_probs=true",
                   "data.eval=[]")
    trainer = dpo.build(cfg, tracking.Tracker(cfg.tracking, tmp_path / "out", stage="dpo", run_config={})).trainer
    row = trainer.train_dataset[0]

    def reply_logps(model_dir) -> float:
        return reference_logps(models.load_causal_lm(ModelConfig(name_or_path=str(model_dir))), row, "chosen")

    expected = reply_logps(sft_adapter_dir)
    base = reply_logps(adapter_config_base(sft_adapter_dir))
    assert abs(expected - base) > 1e-2
    assert row["ref_chosen_logps"] == pytest.approx(expected, abs=1e-4)
    stored = np.load(ref_cache.cache_root() / trainer.ref_logps.report["train"]["key"] / ref_cache.VALUES_FILE)
    assert stored["ref_chosen_logps"][0] == pytest.approx(expected, abs=1e-4)


def test_dpo_rejects_padding_free_which_trl_ignores(tmp_path, tiny_model_dir, pair_files):
    """TRL 1.16 turns `padding_free` off with a warning and pads as usual; we reject it rather than ignore it.
    The TRL half fails once TRL brings padding-free DPO back, which is the time to expose it."""
    import datasets
    import trl

    with pytest.raises(ConfigError, match="trainer_overrides.padding_free: trl.DPOTrainer 1.16 ignores it"):
        make_cfg(tmp_path, tiny_model_dir, pair_files, "trainer_overrides={padding_free: true}")

    rows = [json.loads(line) for line in pair_files[0].read_text().splitlines()]
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), padding_free=True, use_cpu=True, report_to=[],
                         bf16=False)
    model = models.load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)))
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=models.load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir))))
    assert trainer.padding_free is False
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert "position_ids" not in batch and (batch["attention_mask"] == 0).any(), "a padded batch, not a packed one"
