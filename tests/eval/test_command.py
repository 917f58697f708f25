"""`align eval` end to end: the CLI generated from EvalConfig, its metrics checked against plain-torch forward
passes, pipeline runs, rule judges, malformed rows and the user errors (exit 2)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from plain_torch import PAIRS, load, message, plain_reply_logp, plain_reward, plain_reward_model

from align import cli, config
from align.eval import EvalConfig, command, metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 2-4 s; keeps the default suite under 3 minutes (CI runs slow tests too)
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
    saved = config.load_config(EvalConfig, out / "config.yaml")
    assert (saved.policy, saved.num_samples, saved.beta, saved.batch_size) == (str(policy_dir), 4, 0.2, 8)
    for name in ("eval_summary.png", "eval_lengths.png", "eval_margins.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    report = json.loads((out / "eval.json").read_text())
    assert report["data"] == {"path": str(pairs_file), "format": "trl_preference", "prompts": 4, "pairs": 4,
                              "skipped": {"prompts": {}, "pairs": {}}}
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
    assert report["judge"]["pairs"]["accuracy"] == sum(chosen_wins) / 4 and report["judge"]["truncated"] == 0

    # Baselines on the same pairs, by hand: length heuristics, the reference's own log-prob ranking.
    table = report["baselines"]["all"]
    longer = [1.0 if len(c) > len(r) else 0.5 if len(c) == len(r) else 0.0 for _, c, r in PAIRS[:4]]
    assert table["longer reply"]["accuracy"] == sum(longer) / 4
    assert table["shorter reply"]["accuracy"] == sum(1 - x for x in longer) / 4
    ref_margin = [plain_reply_logp(reference_model, tokenizer, p, c) > plain_reply_logp(reference_model, tokenizer, p, r)
                  for p, c, r in PAIRS[:4]]
    assert table[f"starting policy log-prob margin ({tiny_model_dir.name})"]["accuracy"] == sum(ref_margin) / 4
    assert table[f"{policy_dir.name} implicit reward"]["accuracy"] == sum(m > 0 for m in margins) / 4
    assert table["judge"]["accuracy"] == sum(chosen_wins) / 4
    assert all(row["ci"][0] <= row["accuracy"] <= row["ci"][1] for row in table.values())
    assert "## Pair accuracy beside its baselines" in printed and "| longer reply |" in printed
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    prompts = [p for p, _, _ in PAIRS[:4]]
    by_model = {name: [s for s in samples if s["model"] == name] for name in (tiny_model_dir.name, policy_dir.name)}
    scores = {name: [plain_reward(reward_model, tokenizer, p, s["completion"]) for p, s in zip(prompts, rows)]
              for name, rows in by_model.items()}
    outcomes = metrics.win_outcomes(scores[policy_dir.name], scores[tiny_model_dir.name])
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


def test_help_lists_every_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    docs = config.field_docs(EvalConfig)
    for field in config.option_fields(EvalConfig):
        assert config.option_name(field.name) in printed, field.name
        assert docs[field.name] in printed
    assert "--stage" not in printed
    assert "--kl-estimator {k1,k3}" in printed and "(default: 128)" in printed


def documented_invocations() -> list[str]:
    """Every `align eval ...` command line in the README's and docs' shell blocks (continuation lines joined)."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL):
            found += [line.strip() for line in block.replace("\\\n", " ").splitlines()
                      if line.strip().startswith("align eval ")]
    return found


def test_documented_invocations_still_load():
    invocations = documented_invocations()
    assert len(invocations) >= 5
    for line in invocations:
        args = cli.build_parser().parse_args(shlex.split(line)[1:])
        given = config.given_options(args, EvalConfig) + args.overrides
        base = {"policy": "p", "data": "d"} if args.config else {}  # a --config file shown in the docs is not here
        assert isinstance(config.load_config(EvalConfig, None, given, base=base), EvalConfig), line


@pytest.mark.parametrize("source", ["file", "override"])
def test_a_misspelt_key_is_refused_naming_it(source, tmp_path, capsys):
    given = {"policy": str(tmp_path / "policy"), "data": str(tmp_path / "data.jsonl"), "num_sample": 3}
    if source == "file":
        path = tmp_path / "eval.yaml"
        path.write_text(yaml.safe_dump(given))
        argv = ["eval", "--config", str(path)]
    else:
        argv = ["eval", "--policy", given["policy"], "--data", given["data"], "num_sample=3"]
    assert cli.main(argv) == 2
    assert "num_sample: unknown key. Did you mean 'num_samples'?" in capsys.readouterr().err


def test_on_error_skip_leaves_a_malformed_pair_out_and_counts_it(tmp_path, pairs_file, tiny_model_dir, policy_dir,
                                                                capsys):
    lines = pairs_file.read_text().splitlines()
    lines.insert(2, json.dumps({"prompt": message("user", "hi"), "chosen": 5, "rejected": message("assistant", "no")}))
    pairs_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    settings = tmp_path / "eval.yaml"
    settings.write_text(yaml.safe_dump({"policy": str(policy_dir), "reference": str(tiny_model_dir),
                                        "data": str(pairs_file), "out": str(out), "max_new_tokens": 2,
                                        "temperature": 0.0, "num_threads": 1}))
    assert cli.main(["eval", "--config", str(settings)]) == 2
    assert f"{pairs_file}:3: wrong_type" in capsys.readouterr().err

    # from --config, an option and an override together: the option and the override apply over the file
    assert cli.main(["eval", "--config", str(settings), "--on-error", "skip", "num_samples=10"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["data"] == {"path": str(pairs_file), "format": "trl_preference", "prompts": 5, "pairs": 5,
                              "skipped": {"prompts": {"wrong_type": 1}, "pairs": {"wrong_type": 1}}}
    assert "skipped as malformed: prompts 1, pairs 1" in (out / "eval.md").read_text()
    saved = config.load_config(EvalConfig, out / "config.yaml")
    assert (saved.on_error, saved.num_samples, saved.max_new_tokens) == ("skip", 10, 2)


def test_rule_judge_without_reference_reports_the_policy_alone(tmp_path, prompts_file, tiny_model_dir):
    rule = tmp_path / "rule.py"
    rule.write_text("def length(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    result = command.run(EvalConfig(policy=str(tiny_model_dir), data=str(prompts_file), judge=f"rule:{rule}:length",
                                    out=str(tmp_path / "eval"), max_new_tokens=5, num_samples=3, temperature=0.0,
                                    num_threads=1))
    (policy,) = result.report["policies"]
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    lengths = [float(len(s["completion"])) for s in samples]
    assert policy["generation"]["judge_score_mean"] == sum(lengths) / 3
    # The interval resamples the 3 scores: it lies within their range, and the table shows it beside the mean.
    low, high = policy["generation"]["judge_score_ci"]
    assert min(lengths) <= low <= sum(lengths) / 3 <= high <= max(lengths)
    assert f"| judge score (mean) | {sum(lengths) / 3:.3f} [{low:.3f}, {high:.3f}] |" in (
        tmp_path / "eval" / "eval.md").read_text()
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
    result = command.run(EvalConfig(policy=str(run_dir), data=str(prompts_file), max_new_tokens=4, num_samples=3,
                                    temperature=0.0, num_threads=1))
    report = result.report
    assert report["reference"]["name"] == "sft"
    assert [p["name"] for p in report["policies"]] == ["dpo"]
    assert report["judge"]["spec"] == f"reward:{run_dir / 'reward'}"
    assert "win_rate" in report["policies"][0]["generation"]
    assert "| metric | sft (reference) | dpo |" in result.markdown
    assert (run_dir / "eval" / "eval.md").read_text() == result.markdown


def test_every_pass_shows_progress_that_ends_at_its_total(tmp_path, pairs_file, tiny_model_dir, policy_dir,
                                                          tiny_reward_model_dir, monkeypatch):
    """Each model gets a bar whose total is exactly the rows its passes go through, so the ETA is right."""
    bars = []

    class Bar:
        def __init__(self, name, total):
            self.name, self.total, self.n = name, total, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(command, "progress_bar", Bar)
    cfg = EvalConfig(policy=str(policy_dir), reference=str(tiny_model_dir), data=str(pairs_file),
                     judge=f"reward:{tiny_reward_model_dir}", out=str(tmp_path / "eval"), max_new_tokens=4,
                     num_samples=3, batch_size=2, judge_max_length=6)
    result = command.run(cfg)
    # Every text the judge read was longer than 6 tokens: 3 replies of each model and both sides of 3 pairs.
    assert result.report["judge"]["truncated"] == 3 + 3 + 2 * 3
    assert [(bar.name, bar.total) for bar in bars] == [
        (tiny_model_dir.name, 3 + 3 + 2 * 3), (policy_dir.name, 3 + 3 + 2 * 3 + 2 * 3), ("judge on pairs", 2 * 3)]
    assert all(bar.n == bar.total for bar in bars)
