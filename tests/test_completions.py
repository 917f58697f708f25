"""Sampling replies on the tiny model: left-padded batches equal one-by-one generation, seeds reproduce, the caller's
random state is untouched; statistics on constructed replies; completions.jsonl, W&B table and the callback."""

from __future__ import annotations

import json

import pytest
from tiny import CONVERSATIONS, PAIRS, messages, write_pairs

from align import completions, models
from align.completions import Generated
from align.sections import ModelConfig

PROMPTS = [
    [{"role": "user", "content": "what is the capital of france?"}],
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write a short poem about the sea"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    return models.load_tokenizer(cfg), models.load_causal_lm(cfg)


def test_batched_left_padded_generation_equals_one_at_a_time(tiny):
    tokenizer, model = tiny
    batched = completions.generate(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=0.0, batch_size=3)
    single = completions.generate(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=0.0, batch_size=1)
    assert batched.responses == single.responses
    assert len({len(ids) for ids in batched.prompt_ids}) > 1, "prompts of different lengths, so padding happened"


def test_sampling_is_seeded_and_leaves_the_global_random_state_alone(tiny):
    import torch

    tokenizer, model = tiny
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    model.train()
    first = completions.generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    assert model.training, "the caller's train/eval mode is restored"
    model.eval()
    again = completions.generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=7)
    other = completions.generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=8)
    assert first.responses == again.responses
    assert first.responses != other.responses
    assert all(tokenizer.pad_token_id not in response for response in first.responses)


def test_replies_are_cut_after_the_first_eos(tiny):
    import torch

    tokenizer, model = tiny
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer("paris", add_special_tokens=False)["input_ids"]
    prompt_width = max(len(completions.prompt_ids(tokenizer, p)) for p in PROMPTS[:2])

    def fake_generate(input_ids, attention_mask, generation_config):
        assert input_ids.shape[1] == prompt_width
        assert bool((attention_mask[:, 0] == 0).any()), "left padding: the shorter prompt starts with pads"
        replies = [word + [eos, pad, pad], word + word + [eos, eos]]
        width = max(map(len, replies))
        return torch.cat((input_ids, torch.tensor([r + [pad] * (width - len(r)) for r in replies])), 1)

    model.generate = fake_generate
    try:
        out = completions.generate(model, tokenizer, PROMPTS[:2], max_new_tokens=8)
    finally:
        del model.generate
    assert out.responses == [word + [eos], word + word + [eos]]
    assert out.has_eos == [True, True]
    assert out.texts == ["paris", "parisparis"]


def test_completion_stats_on_constructed_replies():
    eos = 2
    generated = Generated(prompt_ids=[[1], [1], [1], [1]],
                          responses=[[5, 6, eos], [5, 6, 7, 8, 5, 6, 7, 8], [9, eos], [4, 4, 4, 4, 4]],
                          has_eos=[True, False, True, False], texts=["", "", "", ""])
    stats = completions.completion_stats(generated)
    assert stats["length_mean"] == pytest.approx((3 + 8 + 2 + 5) / 4)
    assert stats["eos_rate"] == 0.5
    assert stats["repetition_rate"] == 0.5  # 5 6 7 8 repeats; 4 4 4 4 4 holds "4 4 4 4" twice (overlapping)


def test_repetition_rate_ignores_a_closing_eos():
    eos = 2
    # [9, 9, 9, eos, ...]: the EOS is not content, so "9 9 9 eos" never counts; [9] * 5 repeats "9 9 9 9".
    replies = [[9, 9, 9, eos], [9, 9, 9, 9, 9], [5, 6, 7, 8, 5, 6, 7, 8, eos], [3, 4, eos]]
    assert completions.repetition_rate(replies, eos) == 0.5
    assert completions.repetition_rate([[9, 9, 9, 9, 9, 9, 9, eos], [eos]], eos) == 0.5
    with pytest.raises(ValueError, match="no replies"):
        completions.repetition_rate([], eos)


@pytest.mark.parametrize("tokens, repeated", [([1, 2, 3, 4, 1, 2, 3, 4], True), ([1, 2, 3, 4, 1, 2, 3, 5], False),
                                              ([7] * 5, True), ([7] * 4, False), ([], False)])
def test_has_repeated_ngram(tokens, repeated):
    assert completions.has_repeated_ngram(tokens) is repeated


def test_sample_completions_rows(tiny):
    tokenizer, model = tiny
    rows = completions.sample_completions(model, tokenizer, PROMPTS, 5)
    assert [row["prompt"] for row in rows] == [p[-1]["content"] for p in PROMPTS]
    assert all(set(row) == {"prompt", "completion", "length", "eos", "repeated_ngram"} for row in rows)
    assert all(1 <= row["length"] <= 5 for row in rows)


def test_write_completions_appends_and_logs_a_wandb_table(tmp_path, monkeypatch):
    from wandb_records import finished_run_file, summarize

    from align.sections import TrackingConfig
    from align.tracking import Tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(TrackingConfig(backend="wandb", mode="offline"), tmp_path, stage="sft", run_config={})
    row = {"prompt": "hi", "completion": "hello", "length": 2, "eos": True, "repeated_ngram": False}
    completions.write_completions(tmp_path, 1, [row], tracker)
    path = completions.write_completions(tmp_path, 2, [row, row], tracker)
    tracker.finish()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 2] and lines[0]["completion"] == "hello"
    assert "completions/_type" in summarize(finished_run_file(tmp_path))["history"]


def test_callback_samples_at_start_and_every_n_steps(tmp_path, tiny):
    from transformers import TrainerControl, TrainerState

    from align import health
    from align.sections import TrackingConfig
    from align.tracking import Tracker, read_metrics

    tokenizer, model = tiny
    tracker = Tracker(TrackingConfig(backend="none"), tmp_path, stage="sft", run_config={})
    reporter = health.HealthReporter(health.HealthMonitor(), tracker)
    callback = completions.completions_callback(PROMPTS[:2], 2, tokenizer=tokenizer, tracker=tracker,
                                                max_new_tokens=4, health=reporter)
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
    from align import runner
    from align.data import StageData

    conversation = messages(CONVERSATIONS[0])  # two turns: the prompt keeps the first reply
    pair = {"prompt": [{"role": "user", "content": "hello"}], "chosen": [{"role": "assistant", "content": "hi"}],
            "rejected": [{"role": "assistant", "content": "no"}]}
    with_tools = {"messages": conversation, "tools": [{"type": "function", "function": {"name": "f"}}]}
    sft = StageData(train=[with_tools, {"messages": conversation}], eval=[], report={})
    assert runner.completion_prompts(sft, 4) == [conversation[:3]]
    assert conversation[2] == {"role": "user", "content": "and the dog?"}
    pairs = StageData(train=[pair], eval=[{**pair, "prompt": [{"role": "user", "content": "bye"}]}] * 3, report={})
    assert runner.completion_prompts(pairs, 2) == [[{"role": "user", "content": "bye"}]] * 2


def completion_steps(out) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for line in (out / completions.COMPLETIONS_FILE).read_text().splitlines():
        row = json.loads(line)
        found.setdefault(row["step"], []).append(row["prompt"])
    return found


TRAIN = {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-2, "max_length": 64, "save_steps": 4,
         "num_threads": 1, "lr_scheduler": "constant"}
SAMPLING = {"completions_every": 2, "completions_prompts": 2, "completions_max_new_tokens": 4}


def test_sft_run_samples_completions_every_n_steps(tmp_path, tiny_model_dir):
    from align import config, stages, tracking
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
