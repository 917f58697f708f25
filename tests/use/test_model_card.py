"""The model card of an hf export: built from the run dirs that made the model (base model, each stage's data
fingerprint, key settings, final metrics, held-out checks, align eval reports), with the licence left to the user."""

from __future__ import annotations

import json

import yaml

from align import cli
from align.use import card

CHECK = {"summary": "greedy token agrees at 100.0% of 9 positions"}


def _stage(path, stage: str, model: str, *, lineage: dict | None = None, summary: dict | None = None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({
        "stage": stage, "model": {"name_or_path": model, "lora": {"enabled": stage == "dpo", "rank": 8}},
        "data": {"train": [{"path": f"data/{stage}.jsonl"}]},
        "train": {"learning_rate": 5e-6 if stage == "dpo" else 2e-5, "max_steps": 10, "seed": 3}, "beta": 0.1}))
    (path / "summary.json").write_text(json.dumps(summary or {"metrics": {"steps": 10, "train_loss": 1.23456789}}))
    if lineage:
        (path / "lineage.json").write_text(json.dumps(lineage))
    return path


def test_card_walks_the_lineage_back_to_the_base_model(tmp_path):
    run = tmp_path / "run"
    sft = _stage(run / "sft", "sft", "HuggingFaceTB/SmolLM2-135M-Instruct",
                 lineage={"data": {"fingerprint": "abc123", "sources": [{"path": "data/sft.jsonl"}]}})
    dpo = _stage(run / "dpo", "dpo", str(sft), summary={
        "metrics": {"steps": 10, "eval_rewards/accuracies": 0.75, "learning_rate_final": 0.0},
        "held_out": {"implicit_reward_accuracy": 0.75}})
    (dpo / "eval").mkdir()
    (dpo / "eval" / "eval.md").write_text("| model | win rate |\n|---|---|\n| dpo | 0.61 |\n")

    text = card.render("my-model", str(dpo), CHECK, str(run))
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["tags"] == ["align", "sft", "dpo"]
    assert "license" not in front and "# license: set the licence" in text
    assert text.index("### 1. sft") < text.index("### 2. dpo")
    assert "`data/sft.jsonl` (fingerprint `abc123`)" in text and "`data/dpo.jsonl`" in text
    assert "train.learning_rate: 5e-06" in text and "beta: 0.1" in text and "model.lora.rank: 8" in text
    assert "final metrics: steps 10, train_loss 1.235" in text
    assert "eval_rewards/accuracies 0.75" in text and "learning_rate_final" not in text
    assert '"implicit_reward_accuracy": 0.75' in text
    assert "#### Evaluation (`dpo/eval`)" in text and "| dpo | 0.61 |" in text
    assert "greedy token agrees at 100.0% of 9 positions" in text


def test_a_model_from_no_run_has_a_card_that_says_so(tmp_path, tiny_model_dir):
    text = card.render("m", str(tiny_model_dir), CHECK, str(tiny_model_dir))
    assert "base_model" not in text.split("---")[1]  # a local path is no hub id
    assert "No align run dirs found" in text


def test_exported_sft_run_card_names_its_stage_data_and_metrics(sft_run, tmp_path):
    out = tmp_path / "hf"
    assert cli.main(["export", str(sft_run.out), "--format", "hf", "--out", str(out), "--num-threads", "1"]) == 0
    text = (out / "README.md").read_text()
    assert "### 1. sft" in text and f"`{sft_run.inputs['train']}`" in text
    assert "train.learning_rate: 0.01" in text and "final metrics: steps 4" in text
