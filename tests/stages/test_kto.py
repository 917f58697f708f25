"""KTO stage on a tiny model: pairs are split into desirable and undesirable rows (counted), the implicit reward
margin moves the right way on pairs a tiny model can separate, the weight-ratio check names the weights to use,
a data section mixing kinds is refused, and precomputed reference log-probs are cached as in dpo."""

from __future__ import annotations

import json
import math

import finished_runs
import pytest
import torch
from safetensors.torch import load_file
from tiny import SEPARABLE_PAIRS, write_pairs, write_unpaired

from align import config, models, stages
from align.errors import ConfigError
from align.observe import tracking
from align.sections import ModelConfig
from align.stages import kto, ref_cache
from align.stages.kto import KTOConfig

TRAIN = {"max_steps": 8, "batch_size": 4, "learning_rate": 1e-2, "max_length": 64, "save_steps": 4, "num_threads": 1,
         "lr_scheduler": "constant"}


def make_cfg(tmp_path, model_dir, train, held_out=None, *overrides) -> KTOConfig:
    base = {"model": {"name_or_path": str(model_dir)},
            "data": {"train": [str(train)], "eval": [str(held_out)] if held_out else []},
            "train": {**TRAIN, "output_dir": str(tmp_path / "out")}, "beta": 0.5}
    return config.load_config(KTOConfig, None, list(overrides), base=base)


@pytest.fixture(scope="module")
def kto_run(tmp_path_factory, tiny_model_dir) -> finished_runs.FinishedRun:
    """KTO, full fine-tuning, 8 steps on SEPARABLE_PAIRS[:8] (split into 16 rows), eval pairs SEPARABLE_PAIRS[8:]."""
    tmp = tmp_path_factory.mktemp("kto-run")
    inputs = {"train": write_pairs(tmp / "train.jsonl", SEPARABLE_PAIRS[:8]),
              "eval": write_pairs(tmp / "eval.jsonl", SEPARABLE_PAIRS[8:])}
    with finished_runs.isolated_env(tmp, plots=False):
        cfg = make_cfg(tmp, tiny_model_dir, inputs["train"], inputs["eval"])
        return finished_runs.FinishedRun(cfg, stages.run("kto", cfg), inputs, {})


def implicit_margins(policy_dir, reference_dir, pairs_file) -> list[float]:
    """Per eval pair: (policy - reference log-prob of chosen) - (policy - reference log-prob of rejected)."""
    from align.eval import scoring

    tokenizer = models.load_tokenizer(ModelConfig(name_or_path=str(reference_dir)))
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    prompts = [p["prompt"] for p in pairs]
    logps = {}
    for name, path in (("policy", policy_dir), ("reference", reference_dir)):
        model = models.load_causal_lm(ModelConfig(name_or_path=str(path))).eval()
        logps[name] = [scoring.reply_logps(model, tokenizer, prompts, [p[side] for p in pairs], 8)
                       for side in ("chosen", "rejected")]
    return [(pc - rc) - (pr - rr) for pc, pr, rc, rr in zip(*logps["policy"], *logps["reference"], strict=True)]


def test_kto_splits_pairs_and_moves_the_implicit_reward_margin_up(kto_run, tiny_model_dir):
    summary = kto_run.summary()
    assert summary["kto_rows"]["train"] == {"desirable": 8, "undesirable": 8}
    assert summary["kto_rows"]["eval"] == {"desirable": 4, "undesirable": 4}
    assert summary["kto_rows"]["weight_ratio"] == 1.0
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = load_file(str(kto_run.out / "model.safetensors"))
    assert [k for k in before if torch.equal(before[k], trained[k])] == []
    # The margin is 0 before training (policy = reference); on held-out prompts it is now positive for every pair.
    margins = implicit_margins(kto_run.out, tiny_model_dir, kto_run.inputs["eval"])
    assert all(m > 0 for m in margins), margins
    assert summary["held_out"]["accuracy"]["all"]["kto implicit reward"]["accuracy"] == 1.0
    logged = tracking.read_metrics(kto_run.out)
    # TRL logs a margin only for batches holding both labels.
    train_margins = [m["rewards/margins"] for m in logged if "rewards/margins" in m]
    assert len(train_margins) >= 4 and train_margins[-1] > train_margins[0]
    assert kto_run.result.metrics["eval_rewards/margins"] > 0 and math.isfinite(kto_run.result.metrics["train_loss"])
    assert config.load_config(KTOConfig, kto_run.out / "config.yaml") == kto_run.cfg


def test_kto_weight_ratio_is_checked_against_the_label_counts(tmp_path, tiny_model_dir):
    """5 desirable and 3 undesirable rows: (1 x 5) / (1 x 3) = 1.67 is outside [1, 4/3]; the message gives
    desirable_weight in [3/5, 4/5] or undesirable_weight in [5/3 / (4/3), 5/3] = [1.25, 1.67]."""
    rows = [(prompt, chosen, True) for prompt, chosen, _ in SEPARABLE_PAIRS[:5]]
    rows += [(prompt, rejected, False) for prompt, _, rejected in SEPARABLE_PAIRS[5:8]]
    train = write_unpaired(tmp_path / "unpaired.jsonl", rows)
    tracker = tracking.Tracker(make_cfg(tmp_path, tiny_model_dir, train).tracking, tmp_path / "out", stage="kto",
                               run_config={})
    with pytest.raises(ConfigError, match=r"= 1\.67, outside the recommended \[1, 4/3\]; set desirable_weight in "
                                          r"\[0\.6, 0\.8\] or undesirable_weight in \[1\.25, 1\.67\]"):
        kto.build(make_cfg(tmp_path, tiny_model_dir, train), tracker)
    built = kto.build(make_cfg(tmp_path, tiny_model_dir, train, None, "undesirable_weight=1.5"), tracker)
    assert built.summary["kto_rows"]["from"] == "unpaired rows"
    assert built.summary["kto_rows"]["train"] == {"desirable": 5, "undesirable": 3}
    assert built.summary["kto_rows"]["weight_ratio"] == pytest.approx(5 / 4.5)
    assert sorted(built.trainer.train_dataset["label"]) == [False] * 3 + [True] * 5
    only_good = write_unpaired(tmp_path / "good.jsonl", rows[:5])
    with pytest.raises(ConfigError, match="no undesirable \\(label false\\) rows among 5"):
        kto.build(make_cfg(tmp_path, tiny_model_dir, only_good), tracker)


def test_kto_config_and_data_errors(tmp_path, tiny_model_dir):
    pairs = write_pairs(tmp_path / "pairs.jsonl", SEPARABLE_PAIRS[:4])
    unpaired = write_unpaired(tmp_path / "unpaired.jsonl", [("hello", "hi", True), ("hello", "go", False)])
    with pytest.raises(ConfigError, match="desirable_weigth: unknown key. Did you mean 'desirable_weight'"):
        make_cfg(tmp_path, tiny_model_dir, pairs, None, "desirable_weigth=2")
    with pytest.raises(ConfigError, match="train.batch_size: KTO's KL term .* needs >= 2, got 1"):
        make_cfg(tmp_path, tiny_model_dir, pairs, None, "train.batch_size=1")
    with pytest.raises(ConfigError, match="trainer_overrides.desirable_weight: set by align"):
        make_cfg(tmp_path, tiny_model_dir, pairs, None, "trainer_overrides={desirable_weight: 2.0}")
    with pytest.raises(ConfigError, match=f"data: mixes unpaired rows \\({unpaired}\\) with preference pairs "
                                          f"\\({pairs}\\); use one kind per run"):
        stages.run("kto", make_cfg(tmp_path, tiny_model_dir, unpaired, pairs))


def test_kto_precomputed_reference_log_probs_are_cached(tmp_path, tiny_model_dir):
    """The first build scores every row (and its mismatched KL completion) with the reference and stores them; the
    second reads them back; they equal a plain forward pass of the starting model."""
    train = write_pairs(tmp_path / "train.jsonl", SEPARABLE_PAIRS[:4])
    cfg = make_cfg(tmp_path, tiny_model_dir, train, None, "precompute_ref_log_probs=true")
    tracker = tracking.Tracker(cfg.tracking, tmp_path / "out", stage="kto", run_config={})
    first = kto.build(cfg, tracker)
    assert first.trainer.ref_model is None
    assert first.summary["reference_log_probs"]["train"]["cache"] == "miss"
    second = kto.build(cfg, tracker)
    report = second.summary["reference_log_probs"]["train"]
    assert report["cache"] == "hit" and report["key"] == first.summary["reference_log_probs"]["train"]["key"]
    dataset = second.trainer.train_dataset
    reference = models.load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir))).eval()
    for row in dataset.select(range(3)):
        for ids, column in ((row["completion_ids"], "ref_logps"), (row["KL_completion_ids"], "ref_KL_logps")):
            full = row["prompt_ids"] + ids
            with torch.no_grad():
                logits = reference(torch.tensor([full])).logits[0, :-1]
            token_logps = torch.log_softmax(logits, -1)[torch.arange(len(full) - 1), torch.tensor(full[1:])]
            assert row[column] == pytest.approx(token_logps[len(row["prompt_ids"]) - 1:].sum().item(), abs=1e-4)
    stored = (ref_cache.cache_root() / report["key"] / ref_cache.VALUES_FILE)
    assert stored.is_file()


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_kto_resume_continues_exactly(tmp_path, tiny_model_dir):
    """2 steps, then resumed to 4 from checkpoint-2: the same weights as 4 steps in one go (the rows' shuffle is
    seeded, and TRL reads them in order, so the resumed run sees the same batches)."""
    train = write_pairs(tmp_path / "train.jsonl", SEPARABLE_PAIRS[:8])
    steps = ("train.save_steps=2",)
    stages.run("kto", make_cfg(tmp_path / "a", tiny_model_dir, train, None, "train.max_steps=2", *steps))
    resumed = stages.run("kto", make_cfg(tmp_path / "a", tiny_model_dir, train, None, "train.max_steps=4",
                                         "train.resume=true", *steps))
    straight = stages.run("kto", make_cfg(tmp_path / "b", tiny_model_dir, train, None, "train.max_steps=4", *steps))
    assert resumed.metrics["steps"] == straight.metrics["steps"] == 4
    assert [m["step"] for m in tracking.read_metrics(tmp_path / "a" / "out") if "loss" in m] == [1, 2, 3, 4]
    a, b = (load_file(str(tmp_path / run / "out" / "model.safetensors")) for run in ("a", "b"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_pipeline_wires_the_preference_stages_as_policy_stages(tmp_path, tiny_model_dir):
    """sft -> kto -> simpo -> orpo: each starts from the previous stage's output; KTO's reference is its starting
    policy (the sft output), ORPO and SimPO have none. Resolving trains nothing."""
    import yaml

    from align import pipeline

    pairs = write_pairs(tmp_path / "pairs.jsonl", SEPARABLE_PAIRS[:4])
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"},
                                              {"role": "assistant", "content": "hi"}]}) + "\n")
    run = tmp_path / "run"
    entry = {"data": {"train": [str(pairs)]}, "train": {"max_steps": 1}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "pipeline", "run_dir": str(run), "model": {"name_or_path": str(tiny_model_dir)},
        "stages": [{"name": "sft", "config": {"data": {"train": [str(chats)]}, "train": {"max_steps": 1}}},
                   {"name": "kto", "config": entry}, {"name": "simpo", "config": entry},
                   {"name": "orpo", "config": entry}]}))
    plans = {plan.name: plan.cfg for plan in pipeline.resolve(pipeline.load(str(path)))}
    assert plans["kto"].model.name_or_path == str(run / "sft") and plans["kto"].reference is None
    assert plans["simpo"].model.name_or_path == str(run / "kto")
    assert plans["orpo"].model.name_or_path == str(run / "simpo")
    assert plans["orpo"].train.output_dir == str(run / "orpo")
