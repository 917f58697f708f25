"""`align eval`: metrics checked against plain-torch forward passes written here, the CLI end to end, pipeline runs,
rule judges and the user errors (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from align import cli, completions, evaluation, models, scoring
from align.sections import ModelConfig

EOS = "<|im_end|>"
PAIRS = [
    ("what is the capital of france?", "paris is the capital of france", "the cat sat on the mat"),
    ("write a short poem about the sea", "the sea and the sky", "no"),
    ("hello", "hello, how can i help?", "goodbye"),
    ("one two three", "four five six", "the lazy dog"),
    ("is the cat on the mat?", "yes the cat sat on the mat", "no answer"),
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def message(role: str, content: str) -> list[dict]:
    return [{"role": role, "content": content}]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": message("user", p), "chosen": message("assistant", c),
                                        "rejected": message("assistant", r)}) + "\n" for p, c, r in PAIRS))
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": message("user", p)}) + "\n" for p, _, _ in PAIRS))
    return path


@pytest.fixture(scope="module")
def policy_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its weights perturbed (seeded): a 'trained' policy whose reference is tiny_model_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-policy")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def load(path: Path):
    cfg = ModelConfig(name_or_path=str(path))
    return models.load_tokenizer(cfg), models.load_causal_lm(cfg).eval()


# ---- independent computations (plain torch, one unpadded sequence at a time) ------------------------------------

def plain_reply_logp(model, tokenizer, prompt: str, reply: str) -> float:
    import torch

    prompt_ids = tokenizer.apply_chat_template(message("user", prompt), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_ids, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1:].sum())


def plain_reward(reward_model, tokenizer, prompt: str, reply: str) -> float:
    import torch

    text = tokenizer.apply_chat_template(message("user", prompt) + message("assistant", reply), tokenize=False)
    text = text[:text.rindex(EOS) + len(EOS)]
    with torch.no_grad():
        return float(reward_model(torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])).logits[0, 0])


def plain_reward_model(path: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path).eval()


# ---- pure metrics -----------------------------------------------------------------------------------------------

def test_win_outcomes_count_ties_as_half():
    assert evaluation.win_outcomes([1.0, 0.0, 2.0], [0.5, 0.0, 3.0]) == [1.0, 0.5, 0.0]


def test_bootstrap_ci_is_seeded_and_contains_the_mean():
    values = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5]
    mean = sum(values) / len(values)
    low, high = evaluation.bootstrap_ci(values, samples=500, seed=1)
    assert low < mean < high and 0.0 <= low and high <= 1.0
    assert evaluation.bootstrap_ci(values, samples=500, seed=1) == (low, high)
    assert evaluation.bootstrap_ci(values, samples=500, seed=2) != (low, high)
    assert evaluation.bootstrap_ci([1.0] * 5) == (1.0, 1.0)


def test_implicit_reward_metrics_by_hand():
    metrics, margins = evaluation.implicit_reward_metrics([-10.0, -20.0], [-12.0, -15.0], [-11.0, -19.0],
                                                          [-11.0, -18.0], beta=0.5)
    # log-ratios: chosen (1, -1), rejected (-1, 3) -> rewards chosen (0.5, -0.5), rejected (-0.5, 1.5)
    assert margins == [1.0, -2.0]
    assert metrics == {"rewards/accuracies": 0.5, "rewards/margins": -0.5, "rewards/chosen": 0.0,
                       "rewards/rejected": 0.5, "logps/chosen": -15.0, "logps/rejected": -13.5}
    beta_free, _ = evaluation.implicit_reward_metrics([-10.0, -20.0], [-12.0, -15.0], [-11.0, -19.0],
                                                      [-11.0, -18.0], beta=0.01)
    assert beta_free["rewards/accuracies"] == metrics["rewards/accuracies"]


def test_judge_pair_metrics():
    assert evaluation.judge_pair_metrics([1.0, 0.0, 2.0], [0.0, 0.0, 3.0]) == {"accuracy": 1 / 3, "margin_mean": 0.0}


@pytest.mark.parametrize("spec", ["reward", "reward:", "rm:/x", "nonsense"])
def test_bad_judge_specs(spec):
    with pytest.raises(evaluation.ConfigError, match="--judge: expected reward:DIR or rule:module:function"):
        scoring.parse_judge(spec)


def test_rule_loading_errors(tmp_path):
    with pytest.raises(evaluation.ConfigError, match="module 'no_such_module_x' not found"):
        scoring.load_rule("no_such_module_x:fn")
    with pytest.raises(evaluation.ConfigError, match="has no function 'nope'"):
        scoring.load_rule("json:nope")
    with pytest.raises(evaluation.ConfigError, match="not found"):
        scoring.load_rule(f"{tmp_path}/missing.py:fn")
    assert scoring.load_rule("json:dumps") is json.dumps


# ---- forward passes against plain torch ---------------------------------------------------------------------------

def test_reply_logps_match_plain_forward_passes(tiny_model_dir):
    tokenizer, model = load(tiny_model_dir)
    prompts = [message("user", p) for p, _, _ in PAIRS]
    replies = [message("assistant", c) for _, c, _ in PAIRS]
    ours = scoring.reply_logps(model, tokenizer, prompts, replies, batch_size=3)
    expected = [plain_reply_logp(model, tokenizer, p, c) for p, c, _ in PAIRS]
    assert ours == pytest.approx(expected, abs=1e-4)


def test_kl_per_sample_matches_k3_by_hand(tiny_model_dir, policy_dir):
    import torch

    tokenizer, reference = load(tiny_model_dir)
    _, policy = load(policy_dir)
    eos = tokenizer.eos_token_id
    prompt_ids = [completions.prompt_ids(tokenizer, message("user", p)) for p, _, _ in PAIRS[:3]]
    responses = [tokenizer("paris", add_special_tokens=False)["input_ids"] + [eos],
                 tokenizer("the sea and the sky", add_special_tokens=False)["input_ids"],
                 [eos]]
    generated = completions.Generated(prompt_ids=prompt_ids, responses=responses, has_eos=[True, False, True],
                                      texts=["", "", ""])
    ours = scoring.kl_per_sample(policy, reference, generated, tokenizer.pad_token_id, "k3", batch_size=3)
    expected = []
    for prompt, response in zip(prompt_ids, responses):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = torch.log_softmax(policy(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            ref = torch.log_softmax(reference(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        log_ratio = (ref - logp)[len(prompt) - 1:]
        expected.append(float((log_ratio.exp() - 1 - log_ratio).sum()))
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert all(kl > 0 for kl in ours)


def test_reward_judge_scores_the_text_cut_after_the_reply_eos(tiny_reward_model_dir):
    judge = scoring.RewardModelJudge(str(tiny_reward_model_dir), "cpu", batch_size=2)
    ours = judge.score([message("user", p) for p, _, _ in PAIRS], [message("assistant", c) for _, c, _ in PAIRS])
    reward_model = plain_reward_model(tiny_reward_model_dir)
    expected = [plain_reward(reward_model, judge.tokenizer, p, c) for p, c, _ in PAIRS]
    assert ours == pytest.approx(expected, abs=1e-5)


# ---- the command --------------------------------------------------------------------------------------------------

def test_cli_end_to_end_on_pairs_matches_independent_metrics(tmp_path, pairs_file, tiny_model_dir, policy_dir,
                                                            tiny_reward_model_dir, capsys):
    out = tmp_path / "eval"
    code = cli.main(["eval", "--policy", str(policy_dir), "--reference", str(tiny_model_dir), "--data",
                     str(pairs_file), "--judge", f"reward:{tiny_reward_model_dir}", "--out", str(out),
                     "--max-new-tokens", "6", "--num-samples", "4", "--seed", "3", "--beta", "0.2",
                     "--num-threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| metric | " in printed and "eval.json" in printed
    for name in ("eval.json", "eval.md", "samples.jsonl"):
        assert (out / name).is_file()
    for name in ("eval_summary.png", "eval_lengths.png", "eval_margins.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    report = json.loads((out / "eval.json").read_text())
    assert report["data"] == {"path": str(pairs_file), "format": "trl_preference", "prompts": 4, "pairs": 4}
    (policy,) = report["policies"]

    # Implicit DPO rewards from our own forward passes.
    tokenizer, policy_model = load(policy_dir)
    _, reference_model = load(tiny_model_dir)
    margins = []
    for p, c, r in PAIRS[:4]:
        ratio_c = plain_reply_logp(policy_model, tokenizer, p, c) - plain_reply_logp(reference_model, tokenizer, p, c)
        ratio_r = plain_reply_logp(policy_model, tokenizer, p, r) - plain_reply_logp(reference_model, tokenizer, p, r)
        margins.append(0.2 * (ratio_c - ratio_r))
    assert policy["pairs"]["rewards/accuracies"] == sum(m > 0 for m in margins) / 4
    assert policy["pairs"]["rewards/margins"] == pytest.approx(sum(margins) / 4, abs=1e-4)

    # Judge: accuracy on the pairs and the win rate, from reward scores computed here.
    reward_model = plain_reward_model(tiny_reward_model_dir)
    chosen_wins = [plain_reward(reward_model, tokenizer, p, c) > plain_reward(reward_model, tokenizer, p, r)
                   for p, c, r in PAIRS[:4]]
    assert report["judge"]["pairs"]["accuracy"] == sum(chosen_wins) / 4
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    prompts = [p for p, _, _ in PAIRS[:4]]
    by_model = {name: [s for s in samples if s["model"] == name] for name in (tiny_model_dir.name, policy_dir.name)}
    scores = {name: [plain_reward(reward_model, tokenizer, p, s["completion"]) for p, s in zip(prompts, rows)]
              for name, rows in by_model.items()}
    outcomes = evaluation.win_outcomes(scores[policy_dir.name], scores[tiny_model_dir.name])
    generation = policy["generation"]
    assert generation["win_rate"] == sum(outcomes) / 4
    low, high = generation["win_rate_ci"]
    assert low <= generation["win_rate"] <= high
    assert generation["kl"] > 0
    assert generation["length_mean"] == sum(s["length"] for s in by_model[policy_dir.name]) / 4
    assert generation["eos_rate"] == sum(s["eos"] for s in by_model[policy_dir.name]) / 4
    assert report["reference"]["name"] == tiny_model_dir.name and "kl" not in report["reference"]["generation"]


def test_cli_pairs_without_reference_exit_2(pairs_file, tiny_model_dir, capsys):
    assert cli.main(["eval", "--policy", str(tiny_model_dir), "--data", str(pairs_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --reference:") and "implicit DPO reward accuracy" in err


@pytest.mark.parametrize("judge, expected", [("gpt4", "--judge: expected reward:DIR or rule:module:function"),
                                             ("rule:no_such_module_x:score", "module 'no_such_module_x' not found"),
                                             ("reward:/no/such/dir", "does not exist")])
def test_cli_bad_judge_exit_2(judge, expected, prompts_file, tiny_model_dir, tmp_path, capsys):
    assert cli.main(["eval", "--policy", str(tiny_model_dir), "--data", str(prompts_file), "--judge", judge,
                     "--out", str(tmp_path / "eval"), "--max-new-tokens", "2", "--num-samples", "1",
                     "--num-threads", "1"]) == 2
    assert expected in capsys.readouterr().err


def test_cli_defaults_are_the_config_defaults():
    args = cli.build_parser().parse_args(["eval", "--policy", "p", "--data", "d"])
    defaults = evaluation.EvalConfig(policy="p", data="d")
    for name in ("max_new_tokens", "num_samples", "seed", "temperature", "beta", "kl_estimator", "batch_size",
                 "num_threads"):
        assert getattr(args, name) == getattr(defaults, name), name


def test_rule_judge_without_reference_reports_the_policy_alone(tmp_path, prompts_file, tiny_model_dir):
    rule = tmp_path / "rule.py"
    rule.write_text("def length(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    result = evaluation.run(evaluation.EvalConfig(policy=str(tiny_model_dir), data=str(prompts_file),
                                                  judge=f"rule:{rule}:length", out=str(tmp_path / "eval"),
                                                  max_new_tokens=5, num_samples=3, temperature=0.0, num_threads=1))
    (policy,) = result.report["policies"]
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert policy["generation"]["judge_score_mean"] == sum(len(s["completion"]) for s in samples) / 3
    assert result.report["reference"] is None and "win_rate" not in policy["generation"]
    assert "pairs" not in policy


def fake_stage(run_dir: Path, stage: str, model_dir: Path, finished_at: str) -> Path:
    """A finished stage dir as the stages write it: the model, config.yaml (stage: ...) and summary.json."""
    out = run_dir / stage
    shutil.copytree(model_dir, out)
    (out / "config.yaml").write_text(f"stage: {stage}\n")
    (out / "summary.json").write_text(json.dumps({"stage": stage, "finished_at": finished_at}))
    return out


def test_pipeline_run_compares_its_stages_against_the_first(tmp_path, prompts_file, tiny_model_dir, policy_dir,
                                                           tiny_reward_model_dir):
    run_dir = tmp_path / "run"
    fake_stage(run_dir, "dpo", policy_dir, "2026-01-01T10:00:09")
    fake_stage(run_dir, "sft", tiny_model_dir, "2026-01-01T10:00:01")
    fake_stage(run_dir, "reward", tiny_reward_model_dir, "2026-01-01T10:00:05")
    (run_dir / "notes").mkdir()  # not a stage
    result = evaluation.run(evaluation.EvalConfig(policy=str(run_dir), data=str(prompts_file), max_new_tokens=4,
                                                  num_samples=3, temperature=0.0, num_threads=1))
    report = result.report
    assert report["reference"]["name"] == "sft"
    assert [p["name"] for p in report["policies"]] == ["dpo"]
    assert report["judge"]["spec"] == f"reward:{run_dir / 'reward'}"
    assert "win_rate" in report["policies"][0]["generation"]
    assert "| metric | sft (reference) | dpo |" in result.markdown
    assert (run_dir / "eval" / "eval.md").read_text() == result.markdown
