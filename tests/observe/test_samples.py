"""Replies sampled while training: the callback samples before training and every N steps, writes completions.jsonl,
logs the statistics and feeds the health rules; the prompts come from the eval rows, else the train rows."""

from __future__ import annotations

import json

import pytest
from tiny import CONVERSATIONS, PAIRS, messages, write_pairs

from align import models
from align.observe import samples
from align.rundir import COMPLETIONS_FILE
from align.sections import ModelConfig

PROMPTS = [
    [{"role": "user", "content": "what is the capital of france?"}],
    [{"role": "user", "content": "hello"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    return models.load_tokenizer(cfg), models.load_causal_lm(cfg)


def test_callback_samples_at_start_and_every_n_steps(tmp_path, tiny):
    from transformers import TrainerControl, TrainerState

    from align.observe import health
    from align.observe.tracking import Tracker, read_metrics
    from align.sections import TrackingConfig

    tokenizer, model = tiny
    tracker = Tracker(TrackingConfig(backend="none"), tmp_path, stage="sft", run_config={})
    reporter = health.HealthReporter(health.HealthMonitor(), tracker)
    callback = samples.completions_callback(PROMPTS, 2, tokenizer=tokenizer, tracker=tracker, max_new_tokens=4,
                                            health=reporter)
    control = TrainerControl()
    callback.on_train_begin(None, TrainerState(global_step=0), control, model=model)
    for step in (1, 2, 3):
        callback.on_step_end(None, TrainerState(global_step=step), control, model=model)
    tracker.finish()
    steps = [json.loads(line)["step"] for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert steps == [0, 0, 2, 2]
    logged = [m for m in read_metrics(tmp_path) if "completions/eos_rate" in m]
    assert [m["step"] for m in logged] == [0, 2]
    assert len(reporter.monitor.history["completions/length_mean"]) == 2, "the health rules see the samples"


def test_completion_prompts_are_the_prompt_part_of_eval_rows_else_train_rows():
    from align.data import StageData

    conversation = messages(CONVERSATIONS[0])  # two turns: the prompt keeps the first reply
    pair = {"prompt": [{"role": "user", "content": "hello"}], "chosen": [{"role": "assistant", "content": "hi"}],
            "rejected": [{"role": "assistant", "content": "no"}]}
    with_tools = {"messages": conversation, "tools": [{"type": "function", "function": {"name": "f"}}]}
    sft = StageData(train=[with_tools, {"messages": conversation}], eval=[], report={})
    assert samples.completion_prompts(sft, 4) == [conversation[:3]]
    assert conversation[2] == {"role": "user", "content": "and the dog?"}
    pairs = StageData(train=[pair], eval=[{**pair, "prompt": [{"role": "user", "content": "bye"}]}] * 3, report={})
    assert samples.completion_prompts(pairs, 2) == [[{"role": "user", "content": "bye"}]] * 2


def completion_steps(out) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for line in (out / COMPLETIONS_FILE).read_text().splitlines():
        row = json.loads(line)
        found.setdefault(row["step"], []).append(row["prompt"])
    return found


TRAIN = {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-2, "max_length": 64, "save_steps": 4,
         "num_threads": 1, "lr_scheduler": "constant"}
SAMPLING = {"completions_every": 2, "completions_prompts": 2, "completions_max_new_tokens": 4}


def test_sft_run_samples_completions_every_n_steps(tmp_path, tiny_model_dir):
    from align import config, stages
    from align.observe import tracking
    from align.stages.sft import SFTConfig

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in CONVERSATIONS))
    cfg = config.load_config(SFTConfig, base={
        "model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(data)]},
        "train": {**TRAIN, "output_dir": str(tmp_path / "out")}, "tracking": SAMPLING})
    out = stages.run("sft", cfg).output_dir
    # No eval split: the first two train conversations, each without its final reply.
    assert completion_steps(out) == {step: ["and the dog?", "one two three"] for step in (0, 2, 4)}
    logged = [m["step"] for m in tracking.read_metrics(out) if "completions/eos_rate" in m]
    assert logged == [0, 2, 4]


def test_dpo_run_samples_completions_from_the_eval_prompts(tmp_path, tiny_model_dir):
    from align import config, stages
    from align.stages.dpo import DPOConfig

    train = write_pairs(tmp_path / "train.jsonl", PAIRS[:8])
    held_out = write_pairs(tmp_path / "eval.jsonl", PAIRS[8:])
    cfg = config.load_config(DPOConfig, base={
        "model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(train)], "eval": [str(held_out)]},
        "train": {**TRAIN, "output_dir": str(tmp_path / "out")}, "tracking": SAMPLING, "beta": 0.5})
    out = stages.run("dpo", cfg).output_dir
    assert completion_steps(out) == {step: [PAIRS[8][0], PAIRS[9][0]] for step in (0, 2, 4)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["health"]["stopped_on_fatal"] is None
