"""GRPO and RLOO on the tiny models: weighted rewards logged one by one, the policy (or only its LoRA adapter) moves,
outputs reload and `align eval` reads them, config mistakes name their key, resume, pipeline wiring, and that both
raise a rule reward (and lower it when the rule is negated)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from align import cli, config, pipeline, stages
from align.errors import ConfigError
from align.eval import judges
from align.observe import tracking
from align.stages import group_rl

SENTENCE = ("the cat sat on the mat and looked at the dog a helpful assistant answers the question with care "
            "what is the capital of france")
WORDS = SENTENCE.split(" ")

RULES = '''
def letters(prompts, completions):
    """The fraction of a reply's characters that are ASCII letters."""
    return [sum(ch.isascii() and ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]


def no_letters(prompts, completions):
    return [-score for score in letters(prompts, completions)]


def one_per_reply(prompts, completions):
    return [1.0]
'''


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": " ".join(WORDS[i:i + 5])}]}) + "\n"
                            for i in range(len(WORDS) - 5)))
    return path


@pytest.fixture
def rules(tmp_path) -> Path:
    path = tmp_path / "rules.py"
    path.write_text(RULES)
    return path


@pytest.fixture
def make_cfg(tmp_path, tiny_model_dir, prompts, rules):
    """make_cfg(stage, *overrides, rewards=None) -> config: 2 steps of 8 completions (4 prompts x 2), 8 new tokens,
    the letters rule unless `rewards` is given, no tracking backend."""

    def make(stage: str, *overrides: str, rewards: list[dict] | None = None):
        base = {"model": {"name_or_path": str(tiny_model_dir)},
                "rewards": rewards or [{"function": f"{rules}:letters"}], "data": {"train": [str(prompts)]},
                "train": {"output_dir": str(tmp_path / stage), "max_steps": 2, "batch_size": 8, "learning_rate": 1e-2,
                          "lr_scheduler": "constant", "max_length": 64, "save_steps": 100, "num_threads": 1},
                "tracking": {"backend": "none"}, "num_generations": 2, "max_completion_length": 8}
        return config.load_config(stages.config_class(stage), None, list(overrides), base=base)

    return make


def weights(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {name: p.detach().clone() for name, p in AutoModelForCausalLM.from_pretrained(path).named_parameters()}


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_grpo_sums_weighted_rewards_logs_each_by_name_and_moves_the_policy(make_cfg, rules, tiny_model_dir,
                                                                            tiny_reward_model_dir, stage_plots):
    cfg = make_cfg("grpo", "tracking.completions_every=1", "tracking.completions_prompts=2", "beta=0.1",
                   rewards=[{"function": f"{rules}:letters"}, {"name_or_path": str(tiny_reward_model_dir),
                                                                "weight": 0.5, "probe": False}])
    result = stages.run("grpo", cfg)
    out = result.output_dir
    model_name = tiny_reward_model_dir.name
    logged = [m for m in tracking.read_metrics(out) if "reward" in m]
    assert [m["step"] for m in logged] == [1, 2]
    for m in logged:
        # TRL's reward is the weighted sum of the rewards, so its mean is the weighted sum of their means.
        assert m["reward"] == pytest.approx(m["rewards/letters/mean"] + 0.5 * m[f"rewards/{model_name}/mean"],
                                            abs=1e-5)
        assert 0.0 <= m["completions/train_repetition_rate"] <= 1.0 and "kl" in m
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rewards"] == [
        {"name": "letters", "weight": 1.0, "source": f"{rules}:letters"},
        {"name": model_name, "weight": 0.5, "source": str(tiny_reward_model_dir)}]
    assert summary["reference"] == f"frozen copy of the starting policy {tiny_model_dir}"
    assert summary["health"]["alerts"] == []
    before, after = weights(tiny_model_dir), weights(out)
    assert all(not torch.equal(before[name], after[name]) for name in before if "layers.0.self_attn" in name)
    saved = config.load_config(stages.config_class("grpo"), out / "config.yaml")
    assert saved.rewards[1].weight == 0.5 and saved.stage == "grpo"
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert {row["step"] for row in completions} == {0, 1, 2} and len(completions) == 6
    assert {"rewards.png", "kl.png", "completions.png"} <= {path.name for path in (out / "plots").iterdir()}


def test_rloo_with_lora_trains_the_adapter_against_the_adapter_disabled_policy(make_cfg, tiny_model_dir,
                                                                               monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = stages.run("rloo", make_cfg("rloo", "model.lora.enabled=true", "model.lora.rank=4", "save_merged=true",
                                      "tracking.backend=wandb", "tracking.project=align-tests")).output_dir
    from wandb_records import finished_run_file, summarize

    logged = summarize(finished_run_file(out))
    assert {"reward", "rewards/letters/mean", "kl"} <= logged["history"] and logged["job_type"] == "rloo"
    assert json.loads((out / "summary.json").read_text())["reference"] == (
        f"the starting policy {tiny_model_dir}: the policy with its LoRA adapter disabled")
    assert all("kl" in m for m in tracking.read_metrics(out) if "reward" in m)
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    before, merged = weights(tiny_model_dir), weights(out / "merged")
    assert any(not torch.equal(before[name], merged[name]) for name in before)


def test_an_sft_adapter_dir_is_merged_and_its_merge_is_the_reference(make_cfg, tmp_path, tiny_model_dir, monkeypatch):
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(3)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "sft")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "sft")
    merged = {name: p.detach().clone() for name, p in model.merge_and_unload().named_parameters()}

    from align.stages import grpo

    built, real_build = [], grpo.build
    monkeypatch.setattr(grpo, "build", lambda cfg, tracker: built.append(real_build(cfg, tracker)) or built[-1])
    result = stages.run("grpo", make_cfg("grpo", f"model.name_or_path={tmp_path / 'sft'}", "beta=0.1",
                                         "train.max_steps=1"))
    reference = dict(built[0].trainer.ref_model.named_parameters())
    assert all(torch.equal(reference[name], merged[name]) for name in merged)
    assert "(merged)" in json.loads((result.output_dir / "summary.json").read_text())["reference"]


def test_grpo_freezing_keeps_the_frozen_block_and_embeddings(make_cfg, tiny_model_dir):
    out = stages.run("grpo", make_cfg("grpo", "model.freeze.first_layers=1", "model.freeze.embeddings=true")).output_dir
    before, after = weights(tiny_model_dir), weights(out)
    frozen = [name for name in before if "layers.0." in name or "embed_tokens" in name]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    assert all(not torch.equal(before[name], after[name]) for name in before if "layers.1.self_attn" in name)


@pytest.mark.parametrize(("stage", "overrides", "message"), [
    ("grpo", ["betta=0.1"], "betta: unknown key. Did you mean 'beta'?"),
    ("grpo", ["rewards=[{functon: x.py:f}]"], "rewards[0].functon: unknown key. Did you mean 'function'?"),
    ("grpo", ["rewards=[{function: m:f, name_or_path: d}]"], "rewards[0].name_or_path: set exactly one of"),
    ("grpo", ["rewards=[]"], "rewards: name at least one reward"),
    ("grpo", ["rewards=[{function: /no/such.py:f}]"], "rewards[0].function: file '/no/such.py' not found"),
    ("grpo", ["num_generations=3"], "batch_size x grad_accum = 8 must be a multiple of num_generations=3"),
    ("grpo", ["loss_type=dapoo"], "loss_type"),
    ("grpo", ["trainer_overrides={reward_weights: [1.0]}"], ("trainer_overrides.reward_weights: set by align; use "
                                                             "rewards[].weight")),
    ("grpo", ["max_completion_length=64"], "train.max_length: must exceed max_completion_length=64"),
    ("rloo", ["scale_rewards=none"], "scale_rewards: unknown key"),
    ("rloo", ["trainer_overrides={normalise_advantages: true}"], "Did you mean 'normalize_advantages'?"),
])
def test_config_mistakes_name_their_key(make_cfg, stage, overrides, message):
    with pytest.raises(ConfigError) as caught:
        make_cfg(stage, *overrides)
    assert message in str(caught.value)


@pytest.mark.parametrize(("setting", "message"), [
    ({"betta": 0.1}, "error: invalid config in {path}: betta: unknown key. Did you mean 'beta'?"),
    ({"trainer_overrides": {"optim": "adamw_nope"}}, "error: trainer_overrides: trl.GRPOConfig rejects"),
])
def test_the_cli_refuses_a_mistake_in_one_error_line(make_cfg, tmp_path, capsys, setting, message):
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump({**config.to_dict(make_cfg("grpo")), **setting}))
    assert cli.main(["grpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(path=path)) and "Traceback" not in err


def test_a_reward_rule_returning_the_wrong_count_names_its_key(make_cfg, rules):
    with pytest.raises(ConfigError, match=r"rewards\[0\].function: must return one float per completion \(8\)"):
        stages.run("grpo", make_cfg("grpo", rewards=[{"function": f"{rules}:one_per_reply"}]))


def test_grpo_resumes_from_its_last_checkpoint(make_cfg, tmp_path, rules):
    stages.run("grpo", make_cfg("grpo", "train.save_steps=2"))
    resumed = stages.run("grpo", make_cfg("grpo", "train.save_steps=2", "train.max_steps=4", "train.resume=true"))
    assert resumed.metrics["steps"] == 4
    assert [m["step"] for m in tracking.read_metrics(tmp_path / "grpo") if "reward" in m] == [1, 2, 3, 4]
    # The prompts per step (and so the data position) and what the rewards measure cannot change on resume.
    with pytest.raises(ConfigError, match=r"train.resume: rewards\[0\].function: .*:letters' -> .*:no_letters'; "
                                          r"num_generations: 2 -> 4 differ"):
        stages.run("grpo", make_cfg("grpo", "train.save_steps=2", "train.max_steps=6", "train.resume=true",
                                    "num_generations=4", f"rewards=[{{function: '{rules}:no_letters'}}]"))
    with pytest.raises(ConfigError, match=r"train.resume: rewards \(entries\): 1 -> 2 differ"):
        stages.run("grpo", make_cfg("grpo", "train.max_steps=6", "train.resume=true", rewards=[
            {"function": f"{rules}:letters"}, {"function": f"{rules}:no_letters"}]))


def test_a_run_saved_before_a_reward_key_existed_resumes(make_cfg, tmp_path):
    """A config.yaml written by an older align lacks keys added to each rewards entry since (the probe keys); a
    key the saved config lacks is not compared, inside a list of entries as anywhere else."""
    stages.run("grpo", make_cfg("grpo", "train.save_steps=2"))
    saved = tmp_path / "grpo" / "config.yaml"
    older = yaml.safe_load(saved.read_text())
    older["rewards"] = [{k: v for k, v in spec.items() if not k.startswith("probe")} for spec in older["rewards"]]
    saved.write_text(yaml.safe_dump(older))
    assert stages.run("grpo", make_cfg("grpo", "train.max_steps=3", "train.resume=true")).metrics["steps"] == 3


@pytest.mark.slow  # 2-4 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_align_eval_scores_a_grpo_output_with_a_rule(make_cfg, rules, prompts, tiny_model_dir, tmp_path):
    out = stages.run("grpo", make_cfg("grpo")).output_dir
    code = cli.main(["eval", "--policy", str(out), "--reference", str(tiny_model_dir), "--data", str(prompts),
                     "--judge", f"rule:{rules}:letters", "--out", str(tmp_path / "eval"), "--max-new-tokens", "6",
                     "--num-samples", "4", "--num-threads", "1"])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    (policy,) = report["policies"]
    assert policy["path"] == str(out)
    assert 0.0 <= policy["generation"]["judge_score_mean"] <= 1.0 and policy["generation"]["kl"] > 0


def write_group_pipeline(tmp_path, tiny_model_dir, prompts, rules) -> Path:
    """reward -> grpo (rewards left to the wiring) -> rloo (its own rule), one step each."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": [{"role": "user", "content": "hello"}],
                                 "chosen": [{"role": "assistant", "content": "hello"}],
                                 "rejected": [{"role": "assistant", "content": "no"}]}) + "\n")
    train = {"max_steps": 1, "batch_size": 2, "max_length": 64}
    rl = {"data": {"train": [str(prompts)]}, "train": train, "num_generations": 2, "max_completion_length": 8}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"stage": "pipeline", "run_dir": str(tmp_path / "run"),
                                    "model": {"name_or_path": str(tiny_model_dir)}, "stages": [
        {"name": "reward", "config": {"data": {"train": [str(pairs)]}, "train": train}},
        # Names no reward: the wiring gives it the reward stage's model; a one-step reward model is not expected
        # to pass the exploit probe, so the probe is recorded without refusing.
        {"name": "grpo", "config": {**rl, "rewards": [{"probe_threshold": 1.0}]}},
        {"name": "rloo", "config": {**rl, "rewards": [{"function": f"{rules}:letters"}]}}]}))
    return path


def test_pipeline_gives_grpo_and_rloo_the_latest_policy_and_the_last_reward_model(tmp_path, tiny_model_dir, prompts,
                                                                                   rules):
    path = write_group_pipeline(tmp_path, tiny_model_dir, prompts, rules)
    plans = pipeline.resolve(pipeline.load(str(path)))
    run = tmp_path / "run"
    assert [p.cfg.model.name_or_path for p in plans] == [str(tiny_model_dir), str(tiny_model_dir), str(run / "grpo")]
    assert [(r.name_or_path, r.function, r.probe_threshold) for r in plans[1].cfg.rewards] == [
        (str(run / "reward"), None, 1.0)]
    assert [(r.name_or_path, r.function) for r in plans[2].cfg.rewards] == [(None, f"{rules}:letters")]
    assert plans[1].inputs == {"model": str(tiny_model_dir), "rewards[0]": str(run / "reward")}
    assert cli.main(["validate", str(path)]) == 0


@pytest.mark.slow
def test_a_reward_grpo_rloo_pipeline_runs_on_its_own_reward_model(tmp_path, tiny_model_dir, prompts, rules):
    """The wiring above, run: grpo scores with the reward stage's model, rloo starts from grpo's output. About 20 s."""
    path = write_group_pipeline(tmp_path, tiny_model_dir, prompts, rules)
    assert cli.main(["pipeline", "--config", str(path)]) == 0
    run = tmp_path / "run"
    assert all((run / stage / "DONE").is_file() for stage in ("reward", "grpo", "rloo"))
    logged = {key for m in tracking.read_metrics(run / "grpo") for key in m if key.startswith("rewards/")}
    assert logged == {"rewards/reward/mean", "rewards/reward/std"}, "named after the reward stage's dir"
    probe = json.loads((run / "grpo" / "probe.json").read_text())
    assert probe["reward_model"] == str(run / "reward") and probe["threshold"] == 1.0
    inputs = json.loads((run / "rloo" / "lineage.json").read_text())["inputs"]
    assert (inputs["model"]["name_or_path"], inputs["model"]["stage"]) == (str(run / "grpo"), "grpo")


def test_reward_names_are_readable_and_unique():
    specs = [group_rl.RewardSpec(function="examples/rewards.py:concise"),
             group_rl.RewardSpec(function="pkg.rules:concise"), group_rl.RewardSpec(name_or_path="runs/x/reward/")]
    assert group_rl.reward_labels(specs) == ["concise", "concise_2", "reward"]


@pytest.mark.slow  # about 7 s each (20 steps, a run and its negated control); CI runs slow tests too
@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_the_policy_raises_a_rule_reward_and_lowers_it_when_negated(make_cfg, rules, stage):
    """Rule: the fraction of a reply's characters that are ASCII letters (about 0.62 for the tiny model at first;
    its byte-level vocabulary holds letters and other bytes, so the share can go either way). 20 steps of 2 prompts x
    8 completions of up to 16 tokens, lr 1e-2, beta 0 (RLOO's default KL penalty, summed over the reply, outweighs
    differences this small). Mean share of the first / last 5 steps, seeds 42, 1, 2: grpo 0.63 -> 0.84, 0.80, 0.83
    and negated 0.62 -> 0.44, 0.38, 0.40; rloo 0.63 -> 0.82, 0.82, 0.83 and negated 0.62 -> 0.43, 0.35, 0.42. Both runs
    of a stage: 4-8 s on one core (13 s on a machine busy with other jobs)."""
    settings = ["train.max_steps=20", "train.batch_size=16", "max_completion_length=16", "num_generations=8", "beta=0"]

    def letters_share(rule: str) -> tuple[float, float]:
        cfg = make_cfg(stage, *settings, f"train.output_dir={rules.parent / rule}",
                       rewards=[{"function": f"{rules}:{rule}"}])
        scores = [abs(m[f"rewards/{rule}/mean"]) for m in tracking.read_metrics(stages.run(stage, cfg).output_dir)
                  if "reward" in m]
        return sum(scores[:5]) / 5, sum(scores[-5:]) / 5

    first, last = letters_share("letters")
    assert last > first + 0.1, f"letters rewarded: {first:.2f} -> {last:.2f}"
    first, last = letters_share("no_letters")
    assert last < first - 0.1, f"letters penalised: {first:.2f} -> {last:.2f}"


def write_cfg(path: Path, cfg) -> Path:
    path.write_text(config.dump_yaml(cfg))
    return path


def test_a_reward_model_failing_the_probe_stops_grpo_before_training(make_cfg, tmp_path, tiny_reward_model_dir,
                                                                     rules, capsys):
    # Threshold 0: any variant that outscores the original even once fails the probe. The rule is not probed.
    cfg = make_cfg("grpo", rewards=[{"function": f"{rules}:letters"},
                                    {"name_or_path": str(tiny_reward_model_dir), "probe_threshold": 0.0,
                                     "probe_prompts": 4}])
    code = cli.main(["grpo", "--config", str(write_cfg(tmp_path / "grpo.yaml", cfg))])
    err = capsys.readouterr().err
    out = tmp_path / "grpo"
    probe = json.loads((out / "probe.json").read_text())
    assert code == 2 and not probe["passed"] and probe["pairs"] == 4
    assert "rewards[1]:" in err and f"'{probe['worst']}'" in err
    assert "probe_threshold: 1.0 under rewards[1]" in err and "probe: false" in err
    assert not list(out.glob("checkpoint-*")) and not (out / "summary.json").exists(), "nothing trained"


@pytest.mark.slow  # 2-4 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_the_probe_override_records_it_and_a_resumed_run_does_not_probe_again(make_cfg, tmp_path, monkeypatch,
                                                                             tiny_reward_model_dir):
    from align.probe import gate

    reward = {"name_or_path": str(tiny_reward_model_dir), "probe_threshold": 1.0, "probe_prompts": 4}
    cfg = make_cfg("rloo", "train.max_steps=1", "train.save_steps=1", rewards=[reward])
    stages.run("rloo", cfg)
    out = tmp_path / "rloo"
    probe = json.loads((out / "probe.json").read_text())
    assert probe["passed"] and probe["threshold"] == 1.0 and probe["pairs"] == 4
    assert set(probe["variants"]) >= {"ngram_loop", "list_spam", "filler", "empty"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["steps"] == 1 and summary["probe"] == {tiny_reward_model_dir.name: probe}

    monkeypatch.setattr(gate, "check_reward_model", lambda *a, **k: pytest.fail("probed again on resume"))
    resumed = make_cfg("rloo", "train.max_steps=2", "train.resume=true", rewards=[reward])
    stages.run("rloo", resumed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["steps"] == 2 and summary["probe"] == {tiny_reward_model_dir.name: probe}


def test_each_of_several_reward_models_is_probed_into_its_own_dir(make_cfg, tmp_path, tiny_reward_model_dir):
    reward = {"name_or_path": str(tiny_reward_model_dir), "probe_threshold": 1.0, "probe_prompts": 2}
    stages.run("grpo", make_cfg("grpo", "train.max_steps=1", rewards=[reward, reward]))
    out, name = tmp_path / "grpo", tiny_reward_model_dir.name
    probes = {label: json.loads((out / f"probe-{label}" / "probe.json").read_text()) for label in (name, f"{name}_2")}
    assert all(probe["pairs"] == 2 for probe in probes.values()) and not (out / "probe.json").exists()
    assert json.loads((out / "summary.json").read_text())["probe"] == probes


def test_a_reward_model_reads_at_most_train_max_length_tokens(tiny_reward_model_dir):
    """As PPO's: a text over the limit (a probe's padded variant) is scored on its last tokens, its EOS kept."""
    judge = group_rl._judge(group_rl.RewardSpec(name_or_path=str(tiny_reward_model_dir)), 0, None, 2, 8)
    prompt, reply = [{"role": "user", "content": WORDS[0]}], [{"role": "assistant", "content": SENTENCE}]
    cut = judge.score([prompt], [reply])
    assert judge.max_length == 8 and judge.truncated == 1
    assert cut != judges.RewardModelJudge.load(str(tiny_reward_model_dir), "cpu", 2).score([prompt], [reply])
