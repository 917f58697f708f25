"""Reward stage on a tiny model: it learns, its eval accuracy is the accuracy of the saved model's scores read at the
reply's EOS token, LoRA saves the score head with the adapter, and over-long pairs are dropped with a count."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

from align import chat, config, models, stages
from align.observe import tracking
from align.sections import ModelConfig
from align.stages.reward import RewardConfig


def make_cfg(tmp_path, model_dir, pair_files, *overrides) -> RewardConfig:
    train, held_out = pair_files
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(train)], "eval": [str(held_out)]},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "batch_size": 3, "learning_rate": 1e-2,
                      "max_length": 64, "save_steps": 2, "num_threads": 1, "lr_scheduler": "constant"}}
    return config.load_config(RewardConfig, None, list(overrides), base=base)


def held_out_accuracy(model_dir, pairs_file) -> float:
    """Score each sequence alone (no padding), so the score is the one at its last token: the reply's EOS."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    wins = 0
    for row in rows:
        scores = []
        for reply in (row["chosen"], row["rejected"]):
            ids = tokenizer(chat.reward_text(tokenizer, row["prompt"], reply), add_special_tokens=False)["input_ids"]
            assert ids[-1] == tokenizer.eos_token_id != tokenizer.pad_token_id
            with torch.no_grad():
                scores.append(model(torch.tensor([ids])).logits[0, 0].item())
        wins += scores[0] > scores[1]
    return wins / len(rows)


def test_reward_full_finetune_eval_accuracy_matches_saved_model(tmp_path, tiny_model_dir, pair_files):
    cfg = make_cfg(tmp_path, tiny_model_dir, pair_files, "center_rewards_coefficient=0.01")
    result = stages.run("reward", cfg)
    out = result.output_dir

    assert result.metrics["steps"] == 4 and math.isfinite(result.metrics["train_loss"])
    assert result.metrics["eval_accuracy"] == held_out_accuracy(out, pair_files[1])
    assert config.load_config(RewardConfig, out / "config.yaml") == cfg
    assert (out / "tokenizer.json").is_file()
    logged = tracking.read_metrics(out)
    assert any("accuracy" in m and "margin" in m for m in logged)
    assert any("eval_accuracy" in m for m in logged)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "reward" and summary["dropped"] == {}

    # Held-out checks: the model's accuracy beside its baselines, by hand on the 4 eval pairs; and the probe.
    table = summary["held_out"]["accuracy"]["all"]
    assert table["reward model"]["accuracy"] == result.metrics["eval_accuracy"]
    # chosen vs rejected characters: eight/one, paris/a dog (a tie), the sky and the sea/bad, you are welcome.../what?
    assert table["longer reply"]["accuracy"] == 3.5 / 4 and table["shorter reply"]["accuracy"] == 0.5 / 4
    low, high = table["longer reply"]["ci"]
    assert low <= 0.875 <= high and table["longer reply"]["n"] == 4
    assert {"starting policy log-prob margin", "starting policy per-token log-prob margin"} <= set(table)
    probe = json.loads((out / "probe.json").read_text())
    assert summary["probe"] == probe and probe["pairs"] == 4 and "ngram_loop" in probe["variants"]

    weights = load_file(str(out / "model.safetensors"))
    assert "score.weight" in weights and not any(k.startswith("lm_head") for k in weights)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not torch.equal(before["model.norm.weight"], weights["model.norm.weight"]), "the body trains too"


def test_reward_lora_saves_score_head_and_reloads_merged(tmp_path, tiny_model_dir, pair_files):
    cfg = make_cfg(tmp_path, tiny_model_dir, pair_files, "model.lora.enabled=true", "model.lora.rank=4",
                   "train.max_steps=2", "save_merged=true")
    result = stages.run("reward", cfg)
    out = result.output_dir
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any("score" in k for k in adapter), "the fresh score head must be saved with the adapter"
    assert result.metrics["eval_accuracy"] == held_out_accuracy(out / "merged", pair_files[1])

    # The adapter dir loads as a plain reward model (base + adapter + score head merged), as PPO loads it.
    tokenizer = models.load_tokenizer(ModelConfig(name_or_path=str(out)))
    reloaded = models.load_sequence_classifier(ModelConfig(name_or_path=str(out)),
                                               pad_token_id=tokenizer.pad_token_id).eval()
    merged = load_file(str(out / "merged" / "model.safetensors"))
    state = reloaded.state_dict()
    assert all(torch.allclose(state[k], v, atol=1e-6) for k, v in merged.items())


def test_reward_drops_and_counts_pairs_over_max_length(tmp_path, tiny_model_dir, pair_files):
    """A pair whose longer side, as the reward model reads it, has more than 24 tokens is dropped and counted under
    its split: counted here by hand (5 of the 8 train pairs, 1 of the 4 eval pairs)."""
    tokenizer = models.load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)))

    def longest(row: dict) -> int:
        return max(len(tokenizer(chat.reward_text(tokenizer, row["prompt"], row[side]), add_special_tokens=False)
                       ["input_ids"]) for side in ("chosen", "rejected"))

    expected = {f"{split}: longer than train.max_length=24": sum(longest(json.loads(line)) > 24
                                                                  for line in path.read_text().splitlines())
                for split, path in zip(("train", "eval"), pair_files, strict=True)}
    assert list(expected.values()) == [5, 1]
    result = stages.run("reward", make_cfg(tmp_path, tiny_model_dir, pair_files, "train.max_steps=1",
                                           "train.max_length=24"))
    assert json.loads((result.output_dir / "summary.json").read_text())["dropped"] == expected
