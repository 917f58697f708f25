"""W&B organisation: readable run names, one group per pipeline run, job_type per stage, artifacts that link
dataset -> sft -> dpo (read back from the offline run files), a resumed stage's same run id, no API key on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny import CONVERSATIONS, PAIRS, messages, write_pairs
from wandb_records import finished_run_file, summarize, wait_finished

from align import cli, pipeline
from align.observe import tracking
from align.sections import TrackingConfig

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("path, stage, name", [("runs/r1/sft", "sft", "r1-sft"), ("out", "dpo", "out-dpo"),
                                               ("runs/dpo_beta0.1", "dpo", "dpo_beta0.1")])
def test_default_run_names(tmp_path, path, stage, name):
    assert tracking.default_run_name(tmp_path / path, stage) == name


def test_model_files_leave_out_checkpoints_and_bookkeeping(tmp_path):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "training_args.bin",
                 "summary.json", "lineage.json", "metrics.jsonl", "config.yaml", "DONE", "README.md",
                 "merged/model.safetensors", "value_model/config.json", "checkpoint-2/model.safetensors",
                 "plots/loss.png", "wandb/run.wandb", "eval/eval.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    found = {f.relative_to(tmp_path).as_posix() for f in tracking.model_files(tmp_path)}
    assert found == {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
                     "training_args.bin", "merged/model.safetensors", "value_model/config.json"}


def test_an_uploaded_model_and_a_reference_to_it_are_the_same_artifact_version(tmp_path, tiny_model_dir,
                                                                             monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where add_file stages its copies
    uploaded = tracking.model_artifact(wandb, tiny_model_dir, upload=True)
    referenced = tracking.model_artifact(wandb, tiny_model_dir, upload=False)
    assert uploaded.name == referenced.name == tracking.artifact_name(tiny_model_dir)
    assert {e.ref for e in referenced.manifest.entries.values()} == {
        f.resolve().as_uri() for f in tracking.model_files(tiny_model_dir)}
    assert all(e.ref is None for e in uploaded.manifest.entries.values())
    assert uploaded.manifest.digest() == referenced.manifest.digest()


def test_a_resumed_stage_continues_its_wandb_run_and_the_key_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = TrackingConfig(backend="wandb", project="p")
    for step in (1, 2):  # the first run, then the resumed one
        tracker = tracking.Tracker(cfg, tmp_path / "out", stage="sft", run_config={"train": {"seed": 1}})
        tracker.log({"loss": 1.0 / step}, step=step)
        tracker.finish()
    files = sorted((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    run_id = (tmp_path / "out" / tracking.RUN_ID_FILE).read_text()
    assert [summarize(wait_finished(path))["id"] for path in files] == [run_id, run_id]
    assert_key_not_written(tmp_path)


def assert_key_not_written(root: Path) -> None:
    leaked = [p for p in root.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert leaked == []


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_two_stage_pipeline_is_one_wandb_group_linked_by_artifacts(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    sft_data, pairs = tmp_path / "data" / "sft.jsonl", tmp_path / "data" / "pairs.jsonl"
    sft_data.parent.mkdir()
    sft_data.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in CONVERSATIONS))
    write_pairs(pairs, PAIRS[:6])
    train = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "max_length": 64, "save_steps": 2,
             "num_threads": 1}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "pipeline", "run_dir": str(tmp_path / "r7"), "model": {"name_or_path": str(tiny_model_dir)},
        "tracking": {"backend": "wandb", "project": "lineage"},
        "stages": [{"name": "sft", "config": {"data": {"train": [str(sft_data)]}, "train": train}},
                   {"name": "dpo", "config": {"data": {"train": [str(pairs)]}, "train": train, "beta": 0.5}}]}))
    assert cli.main(["pipeline", "--config", str(path)]) == 0

    runs = {stage: summarize(finished_run_file(tmp_path / "r7" / stage)) for stage in ("sft", "dpo")}
    for stage, run in runs.items():
        assert (run["group"], run["job_type"], run["name"]) == ("r7", stage, f"r7-{stage}")
        assert "loss" in run["history"] or "train/loss" in run["history"]

    def artifact(stage, kind, used):
        (found,) = [a for a in runs[stage]["artifacts"] if a["type"] == kind and a["used"] is used]
        return found

    assert artifact("sft", "dataset", True)["refs"] == [sft_data.resolve().as_uri()]
    assert artifact("sft", "model", True)["name"] == tracking.artifact_name(tiny_model_dir)
    sft_out = artifact("sft", "model", False)
    sft_dir = (tmp_path / "r7" / "sft").resolve().as_uri()
    assert sft_out["name"] == "r7-sft" and f"{sft_dir}/model.safetensors" in sft_out["refs"]
    assert all(ref.startswith(f"{sft_dir}/") and "checkpoint-" not in ref for ref in sft_out["refs"])
    assert artifact("dpo", "dataset", True)["refs"] == [pairs.resolve().as_uri()]
    dpo_in = artifact("dpo", "model", True)
    assert (dpo_in["name"], dpo_in["digest"]) == (sft_out["name"], sft_out["digest"]), \
        "dpo's input is the very artifact version sft logged: the lineage edge sft -> dpo"
    assert artifact("dpo", "model", False)["name"] == "r7-dpo"
    assert_key_not_written(tmp_path)


def test_pipeline_tracking_subsections_merge_key_by_key(tmp_path, tiny_model_dir):
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:4])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "pipeline", "run_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tiny_model_dir)},
        "tracking": {"health": {"kl_max": 8.0}, "completions_every": 10},
        "stages": [{"name": "dpo", "config": {"data": {"train": [str(pairs)]}, "train": {"max_steps": 1},
                                              "tracking": {"health": {"window": 5}}}}]}))
    (plan,) = pipeline.resolve(pipeline.load(path))
    assert (plan.cfg.tracking.health.kl_max, plan.cfg.tracking.health.window) == (8.0, 5)
    assert plan.cfg.tracking.completions_every == 10 and plan.cfg.tracking.group == "run"


def test_log_table_appends_rows_to_a_jsonl_and_logs_a_wandb_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = tracking.Tracker(TrackingConfig(backend="wandb", mode="offline"), tmp_path, stage="sft", run_config={})
    row = {"prompt": "hi", "completion": "hello", "length": 2, "eos": True, "repeated_ngram": False}
    tracker.log_table("completions", "completions.jsonl", [row], step=1)
    path = tracker.log_table("completions", "completions.jsonl", [row, row], step=2)
    tracker.finish()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"step": 1, **row}, {"step": 2, **row}, {"step": 2, **row}]
    assert "completions/_type" in summarize(finished_run_file(tmp_path))["history"]
    elsewhere = tracking.Tracker(TrackingConfig(), tmp_path / "other", stage="sft", run_config={}, is_main=False)
    assert elsewhere.log_table("samples", "samples.jsonl", [row], step=1) is None, "only the main process writes"
