"""PPO stage end to end on tiny models: TRL's metrics are logged, only the policy and value model move, outputs
reload, the missing-EOS penalty applies, the pad token is never sampled, a resumed run equals a straight one,
and a bad reward function fails before any weights load. The slow test checks that the policy learns."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align import cli, config, models, ppo_rollout, rl, stages, tracking
from align.errors import ConfigError
from align.stages import ppo
from align.stages.ppo import PPOConfig

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "examples" / "data" / "prompts.jsonl"
TRL_METRICS = ["objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
               "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg",
               "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/ratio", "val/num_eos_tokens", "lr",
               "episode", "timing/generation", "timing/train", "objective/kl_coef", "tokens/response_len_mean",
               "val/frac_missing_eos", "grad_norm/policy", "grad_norm/value"]


def make_cfg(tmp_path, model_dir, *overrides, reward_dir=None, function=None) -> PPOConfig:
    reward = {"name_or_path": str(reward_dir)} if reward_dir else {"function": function}
    base = {"model": {"name_or_path": str(model_dir)}, "reward_model": reward, "data": {"train": [str(PROMPTS)]},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "learning_rate": 1e-3,
                      "lr_scheduler": "constant", "max_length": 160, "save_steps": 100, "num_threads": 1},
            "tracking": {"backend": "none"},
            "ppo": {"rollout_batch_size": 8, "micro_batch": 4, "mini_batches": 2, "ppo_epochs": 2,
                    "response_length": 8}}
    return config.load_config(PPOConfig, None, list(overrides), base=base)


@pytest.fixture
def capture_build(monkeypatch):
    """The PPOBuild of the next run, to look at its models after training."""
    built = []
    real = ppo.build

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(ppo, "build", spy)
    return built


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "rules.py"
    path.write_text("def half(prompts, completions):\n    return [0.5] * len(completions)\n")
    return path


def test_ppo_two_updates_logs_trl_metrics_and_moves_only_trainable_models(tmp_path, tiny_model_dir,
                                                                           tiny_reward_model_dir, capture_build):
    cfg = make_cfg(tmp_path, tiny_model_dir, "ppo.sample_every=1", reward_dir=tiny_reward_model_dir)
    result = stages.run("ppo", cfg)
    out = result.output_dir

    logged = tracking.read_metrics(out)
    assert [m["step"] for m in logged] == [1, 2]
    for record in logged:
        missing = [k for k in TRL_METRICS if k not in record]
        assert not missing, f"metrics not logged: {missing}"
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, (int, float)))
        assert 0.0 <= record["completions/repetition_rate"] <= 1.0
    assert logged[1]["episode"] == 16 and logged[0]["lr"] == pytest.approx(1e-3)
    assert result.metrics["steps"] == 2 and "ppo done: steps 2" in result.summary_line()

    built = capture_build[0]
    start_policy = load_file(str(tiny_model_dir / "model.safetensors"))
    start_reward = load_file(str(tiny_reward_model_dir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert [k for k in start_policy if torch.equal(start_policy[k], after[k])] == [], "every policy weight moves"
    value_after = load_file(str(out / "value_model" / "model.safetensors"))
    assert not torch.equal(value_after["score.weight"], start_reward["score.weight"]), "value model trains"
    for name, tensor in built.reward.state_dict().items():
        assert torch.equal(tensor, start_reward[name]), f"reward model changed: {name}"
    for name, tensor in built.reference.state_dict().items():
        assert torch.equal(tensor, start_policy[name]), f"reference changed: {name}"
    assert not any(q.requires_grad for q in built.reference.parameters())

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    AutoModelForSequenceClassification.from_pretrained(out / "value_model")
    assert AutoTokenizer.from_pretrained(out).pad_token_id == built.tokenizer.pad_token_id
    assert config.load_config(PPOConfig, out / "config.yaml") == cfg
    assert json.loads((out / "summary.json").read_text())["metrics"]["steps"] == 2
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and {"step", "prompt", "completion", "score"} == set(samples[0])


def test_ppo_lora_uses_the_adapter_disabled_policy_as_reference(tmp_path, tiny_model_dir, tiny_reward_model_dir,
                                                                capture_build):
    """The merged model is base + (alpha / rank) B A exactly where LoRA adapts and the base elsewhere: the frozen
    base weights never moved, and the adapter did."""
    cfg = make_cfg(tmp_path, tiny_model_dir, "model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8",
                   "save_merged=true", "train.max_steps=1", reward_dir=tiny_reward_model_dir)
    out = stages.run("ppo", cfg).output_dir
    assert capture_build[0].reference is None, "no second policy copy with LoRA"
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), "LoRA B starts at 0 and must move"
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    merged = load_file(str(out / "merged" / "model.safetensors"))
    adapted = {k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
               for k in adapter if "lora_A" in k}
    for name, weight in merged.items():
        expected = start[name]
        if name in adapted:
            prefix = "base_model.model." + name.removesuffix(".weight")
            expected = expected + 2.0 * adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
        torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6)
    assert len(adapted) == 14, "all-linear: 7 projections x 2 layers"


def test_missing_eos_penalty_and_adaptive_kl(tmp_path, tiny_model_dir, reward_file):
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


def test_pad_is_never_sampled_even_when_it_is_the_likeliest_token(tmp_path, tiny_model_dir, reward_file):
    """A policy whose pad logit is scaled 300x samples pad about half the time; the stage masks it out of the
    sampling distribution. With trl_parity (TRL's behaviour) the same policy does sample it."""
    from transformers import AutoModelForCausalLM

    policy_dir = tmp_path / "pad-loving"
    shutil.copytree(tiny_model_dir, policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    with torch.no_grad():
        model.lm_head.weight[model.config.pad_token_id] *= 300
    model.save_pretrained(policy_dir)

    def sampled_pads(*overrides) -> tuple[int, torch.Tensor]:
        cfg = make_cfg(tmp_path, policy_dir, "ppo.response_length=16", *overrides, function=f"{reward_file}:half")
        b = ppo.build(cfg, tracker=None)
        queries = ppo_rollout.left_pad(b.prompts.next(), b.sampler.pad_id, torch.device("cpu"))
        with torch.no_grad():
            out = b.policy.generate(input_ids=queries, attention_mask=queries != b.sampler.pad_id,
                                    generation_config=b.sampler.generation_config)
            exp, _ = ppo_rollout.rollout(b.sampler, b.policy, b.reference, b.value_model, b.reward, b.tokenizer,
                                         queries)
        generated = out.sequences[:, queries.size(1):]
        _, eos_lengths = rl.truncate_after_eos(generated, b.sampler.eos_id, b.sampler.pad_id)
        before_eos = rl.response_mask(eos_lengths, generated.size(1))
        return int((generated[before_eos] == b.sampler.pad_id).sum()), exp.logprobs

    pads, logprobs = sampled_pads()
    assert pads == 0 and torch.isfinite(logprobs).all()
    parity_pads, _ = sampled_pads("ppo.trl_parity=true", "ppo.score_index=after_eos", "train.max_grad_norm=0")
    assert parity_pads > 20, "the control: without suppression this policy samples pad a lot"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_continues_exactly(tmp_path, tiny_model_dir, tiny_reward_model_dir, lora):
    """4 updates in one go equal 2 updates, stop, resume, 2 more: same weights, same last metrics."""
    extra = ["model.lora.enabled=true", "model.lora.rank=4"] if lora else []
    straight = stages.run("ppo", make_cfg(tmp_path / "a", tiny_model_dir, "train.max_steps=4", *extra,
                                          reward_dir=tiny_reward_model_dir)).output_dir

    def make(steps: int, *more: str) -> PPOConfig:
        return make_cfg(tmp_path / "b", tiny_model_dir, f"train.max_steps={steps}", "train.save_steps=2", *extra,
                        *more, reward_dir=tiny_reward_model_dir)

    stages.run("ppo", make(2))
    out = tmp_path / "b" / "out"
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not list(out.glob("tmp-checkpoint-*"))
    resumed = stages.run("ppo", make(4, "train.resume=true")).output_dir

    policy_file = "adapter_model.safetensors" if lora else "model.safetensors"
    for file in (policy_file, "value_model/model.safetensors"):
        a, b = load_file(str(straight / file)), load_file(str(resumed / file))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{file} differs after resuming"
    logged_a, logged_b = tracking.read_metrics(straight), tracking.read_metrics(resumed)
    assert [m["step"] for m in logged_b] == [1, 2, 3, 4]
    for a, b in zip(logged_a[2:], logged_b[2:], strict=True):
        assert {k: v for k, v in a.items() if k != "time" and not k.startswith("timing/")} == \
               {k: v for k, v in b.items() if k != "time" and not k.startswith("timing/")}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_bad_reward_function_fails_before_any_weights_load(tmp_path, tiny_model_dir, reward_file, monkeypatch):
    with pytest.raises(ConfigError, match=r"reward_model\.function: module 'no_such_module' not found"):
        make_cfg(tmp_path, tiny_model_dir, function="no_such_module:score")
    path = tmp_path / "ppo.yaml"
    path.write_text(config.dump_yaml(make_cfg(tmp_path, tiny_model_dir, function=f"{reward_file}:half"))
                    .replace(f"{reward_file}:half", "no_such_module:score"))
    assert cli.main(["ppo", "--config", str(path)]) == 2

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the reward function was checked")

    monkeypatch.setattr(models, "load_causal_lm", no_weights)
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        stages.run("ppo", make_cfg(tmp_path, tiny_model_dir, function=f"{reward_file}:missing"))


def test_ppo_wandb_offline_run_has_metrics_and_samples_table(tmp_path, tiny_model_dir, reward_file, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(tmp_path, tiny_model_dir, "train.max_steps=1", "ppo.sample_every=1", "tracking.backend=wandb",
                   "tracking.project=align-tests", function=f"{reward_file}:half")
    result = stages.run("ppo", cfg)
    from wandb_records import finished_run_file, summarize

    logged = summarize(finished_run_file(result.output_dir))
    assert {"objective/kl", "objective/scores", "timing/generation", "samples/_type"} <= logged["history"]
    assert logged["job_type"] == "ppo" and "objective/scores" in logged["summary"]


@pytest.mark.parametrize("overrides, message", [
    (["reward_model.function=x:y"], "set exactly one"),
    (["ppo.trl_parity=true"], "set score_index=after_eos"),
    (["ppo.trl_parity=true", "ppo.score_index=after_eos"], "set train.max_grad_norm=0"),
    (["ppo.rollout_batch_size=12"], "must split into mini_batches=2"),
    (["train.batch_size=8"], "leave train.batch_size"),
    (["data.eval_fraction=0.1"], "no evaluation pass"),
    (["model.freeze.first_layers=1"], "model.freeze: not supported"),
    (["ppo.top_p=0", "ppo.temperature=0"], "top_p: must be in"),
])
def test_config_rules(tmp_path, tiny_model_dir, tiny_reward_model_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(tmp_path, tiny_model_dir, *overrides, reward_dir=tiny_reward_model_dir)


@pytest.mark.slow
def test_policy_learns_to_say_the_rewarded_word(tmp_path, tiny_model_dir):
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
                   "ppo.ppo_epochs=4", "ppo.response_length=16", "ppo.temperature=1.0", function=f"{REPO / 'examples' / 'rewards.py'}:mentions_france")
    logged = tracking.read_metrics(stages.run("ppo", cfg).output_dir)
    scores = [m["objective/scores"] for m in logged]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.5, f"mean score {first:.2f} -> {last:.2f}"
    assert max(m["objective/kl"] for m in logged) < 15
