"""Replies sampled while training: the callback samples before training and every N steps, writes completions.jsonl,
logs the statistics and feeds the health rules; the prompts come from the eval rows, else the train rows."""

from __future__ import annotations

import json

import pytest
from tiny import CONVERSATIONS, PAIRS, messages

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


def test_a_stage_samples_the_eval_prompts_before_training_and_every_n_steps(sft_run):
    """`sft_run` (tests/conftest.py) samples 2 prompts every 2 steps of 4: the held-out conversations without their
    final reply."""
    from align.observe import tracking

    assert completion_steps(sft_run.out) == {step: ["good answer or bad answer?", "say eight"] for step in (0, 2, 4)}
    logged = [m["step"] for m in tracking.read_metrics(sft_run.out) if "completions/eos_rate" in m]
    assert logged == [0, 2, 4]


def test_dpo_samples_the_prompts_of_its_eval_pairs(dpo_run):
    assert completion_steps(dpo_run.out) == {step: [PAIRS[8][0], PAIRS[9][0]] for step in (0, 2, 4)}
    assert dpo_run.summary()["health"]["stopped_on_fatal"] is None
