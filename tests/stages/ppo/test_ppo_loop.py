"""The PPO loop end to end on tiny models: TRL's metrics are logged, only the policy and value model move, outputs
reload, the missing-EOS penalty and the adaptive KL controller apply, W&B gets metrics and samples. The slow test
checks that the policy learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from finished_runs import FinishedRun, isolated_env
from safetensors.torch import load_file

from align import config, stages
from align.observe import tracking
from align.stages.ppo import PPOConfig

REPO = Path(__file__).resolve().parents[3]
TRL_METRICS = ["objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
               "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg",
               "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/ratio", "val/num_eos_tokens", "lr",
               "episode", "timing/generation", "timing/train", "objective/kl_coef", "tokens/response_len_mean",
               "val/frac_missing_eos", "grad_norm/policy", "grad_norm/value"]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory, make_cfg, tiny_model_dir, tiny_reward_model_dir) -> FinishedRun:
    """Two updates against the tiny reward model, sampled every update; `seen["build"]` is its PPOBuild. The tests
    below only read it."""
    from align.stages.ppo import setup

    tmp = tmp_path_factory.mktemp("ppo-run")
    seen = {}
    with isolated_env(tmp, plots=False) as monkeypatch:
        real_build = setup.build

        def build(*args, **kwargs):
            seen["build"] = real_build(*args, **kwargs)
            return seen["build"]

        monkeypatch.setattr(setup, "build", build)
        cfg = make_cfg(tmp, tiny_model_dir, "ppo.sample_every=1", reward_dir=tiny_reward_model_dir)
        return FinishedRun(cfg, stages.run("ppo", cfg), {"train": Path(cfg.data.train[0].path)}, seen)


def test_ppo_logs_trl_metrics_every_update(ppo_run):
    logged = tracking.read_metrics(ppo_run.out)
    assert [m["step"] for m in logged] == [1, 2]
    for record in logged:
        missing = [k for k in TRL_METRICS if k not in record]
        assert not missing, f"metrics not logged: {missing}"
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, (int, float)))
        assert "completions/repetition_rate" in record, "reply statistics of the rollout"
    assert logged[1]["episode"] == 16 and logged[0]["lr"] == pytest.approx(1e-3)
    assert ppo_run.result.metrics["steps"] == 2 and "ppo done: steps 2" in ppo_run.result.summary_line()


def test_ppo_moves_only_the_policy_and_the_value_model(ppo_run, tiny_model_dir, tiny_reward_model_dir):
    built = ppo_run.seen["build"]
    start_policy = load_file(str(tiny_model_dir / "model.safetensors"))
    start_reward = load_file(str(tiny_reward_model_dir / "model.safetensors"))
    after = load_file(str(ppo_run.out / "model.safetensors"))
    assert [k for k in start_policy if torch.equal(start_policy[k], after[k])] == [], "every policy weight moves"
    value_after = load_file(str(ppo_run.out / "value_model" / "model.safetensors"))
    assert not torch.equal(value_after["score.weight"], start_reward["score.weight"]), "value model trains"
    for name, tensor in built.reward.state_dict().items():
        assert torch.equal(tensor, start_reward[name]), f"reward model changed: {name}"
    for name, tensor in built.reference.state_dict().items():
        assert torch.equal(tensor, start_policy[name]), f"reference changed: {name}"
    assert not any(q.requires_grad for q in built.reference.parameters())


def test_ppo_outputs_reload_with_their_config_summary_and_samples(ppo_run):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out = ppo_run.out
    AutoModelForCausalLM.from_pretrained(out)
    AutoModelForSequenceClassification.from_pretrained(out / "value_model")
    assert AutoTokenizer.from_pretrained(out).pad_token_id == ppo_run.seen["build"].tokenizer.pad_token_id
    assert config.load_config(PPOConfig, out / "config.yaml") == ppo_run.cfg
    assert ppo_run.summary()["metrics"]["steps"] == 2
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and {"step", "prompt", "completion", "score"} == set(samples[0])
    assert [row["step"] for row in samples] == [1] * 8 + [2] * 8


def test_missing_eos_penalty_and_adaptive_kl(tmp_path, make_cfg, tiny_model_dir, reward_file):
    """The rule scores 0.5; the tiny random policy never ends within 8 tokens, so every score is penalised:
    subtract 1 -> -0.5, replace with -2 -> -2. The adaptive controller moves the KL coefficient each update."""
    cfg = make_cfg(tmp_path, tiny_model_dir, "ppo.missing_eos_penalty=1.0", "ppo.kl_controller=adaptive",
                   "ppo.kl_target=0.01", "ppo.kl_horizon=100", function=f"{reward_file}:half")
    logged = tracking.read_metrics(stages.run("ppo", cfg).output_dir)
    assert all(m["val/frac_missing_eos"] == 1.0 for m in logged)
    assert [m["objective/scores"] for m in logged] == [-0.5, -0.5]
    assert logged[0]["objective/kl_coef"] == 0.05 and logged[1]["objective/kl_coef"] != 0.05

    cfg = make_cfg(tmp_path / "replace", tiny_model_dir, "ppo.missing_eos_penalty=2.0", "ppo.missing_eos_mode=replace",
                   "train.max_steps=1", function=f"{reward_file}:half")
    assert tracking.read_metrics(stages.run("ppo", cfg).output_dir)[0]["objective/scores"] == -2.0


def test_ppo_wandb_offline_run_has_metrics_and_samples_table(tmp_path, make_cfg, tiny_model_dir, reward_file,
                                                              monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(tmp_path, tiny_model_dir, "train.max_steps=1", "ppo.sample_every=1", "tracking.backend=wandb",
                   "tracking.project=align-tests", function=f"{reward_file}:half")
    result = stages.run("ppo", cfg)
    from wandb_records import finished_run_file, summarize

    logged = summarize(finished_run_file(result.output_dir))
    assert {"objective/kl", "objective/scores", "timing/generation", "samples/_type"} <= logged["history"]
    assert logged["job_type"] == "ppo" and "objective/scores" in logged["summary"]


@pytest.mark.slow
def test_policy_learns_to_say_the_rewarded_word(tmp_path, make_cfg, tiny_model_dir):
    """Rule: 1 if the completion says "france" (one token of the tiny vocabulary; in about 1 of 25 completions
    at first). The mean score must rise clearly within 30 updates while the KL to the reference stays bounded.
    Mean of the first / last 5 updates, seed 42: 0.03 -> 0.81, max KL 8.6; seeds 1-4: 0.04-0.05 -> 0.70-0.78,
    max KL 7.8-9.0. About 10 s."""
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "looked", "at", "the", "dog", "a", "helpful",
             "assistant", "answers", "the", "question"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": " ".join(words[i:i + 6])}]}) + "\n"
                               for i in range(len(words) - 6)) * 4)
    cfg = make_cfg(tmp_path, tiny_model_dir, f"data.train=[{prompts}]", "train.max_steps=30",
                   "train.learning_rate=3e-3", "ppo.rollout_batch_size=32", "ppo.micro_batch=16", "ppo.mini_batches=2",
                   "ppo.ppo_epochs=4", "ppo.response_length=16", "ppo.temperature=1.0",
                   function=f"{REPO / 'examples' / 'rewards.py'}:mentions_france")
    logged = tracking.read_metrics(stages.run("ppo", cfg).output_dir)
    scores = [m["objective/scores"] for m in logged]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.5, f"mean score {first:.2f} -> {last:.2f}"
    assert max(m["objective/kl"] for m in logged) < 15
