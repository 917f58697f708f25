"""`align pipeline` on a tiny model: stages hand their outputs on, finished stages are skipped, an interrupted stage
resumes from its checkpoint, --from reruns from a stage, and bad pipelines fail with exit 2 before any training."""

from __future__ import annotations

import json

import pytest
import yaml

from align import cli, config, pipeline
from align.observe import tracking

SFT_ROWS = [("what is the capital of france?", "paris is the capital of france"), ("hello", "hello, how can i help?"),
            ("one two three", "four five six"), ("the quick brown fox", "jumps over the lazy dog")]
PAIRS = [("what is the capital of france?", "paris", "the cat sat on the mat"), ("hello", "hello", "goodbye"),
         ("say seven", "seven", "ten"), ("good answer or bad answer?", "a good answer", "a bad answer"),
         ("one two three", "four five six", "no"), ("thanks", "you are welcome", "what?")]


@pytest.fixture
def files(tmp_path):
    sft, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    sft.write_text("".join(json.dumps({"messages": [{"role": "user", "content": u},
                                                    {"role": "assistant", "content": a}]}) + "\n"
                           for u, a in SFT_ROWS))
    pairs.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}],
                                         "chosen": [{"role": "assistant", "content": c}],
                                         "rejected": [{"role": "assistant", "content": r}]}) + "\n"
                             for p, c, r in PAIRS))
    return {"sft": str(sft), "pairs": str(pairs)}


def train(**extra):
    return {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "max_length": 64, "save_steps": 2,
            "num_threads": 1, "lr_scheduler": "constant", **extra}


def stage(name, files, **extra):
    data = {"train": [files["sft" if name == "sft" else "pairs"]]}
    if name != "sft":
        data["eval_fraction"] = 0.34
    settings = {"data": data, "train": train(), **({"beta": 0.5} if name == "dpo" else {})}
    return {"name": name, "config": config.deep_merge(settings, extra)}


def write(tmp_path, model_dir, stages, **extra) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"stage": "pipeline", "run_dir": str(tmp_path / "run"),
                                    "model": {"name_or_path": str(model_dir)}, "stages": stages, **extra}))
    return str(path)


def loss_steps(out):
    return [m["step"] for m in tracking.read_metrics(out) if "loss" in m]


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_sft_dpo_runs_skips_and_reruns_from_a_stage(tmp_path, tiny_model_dir, files, capsys):
    config = write(tmp_path, tiny_model_dir, [stage("sft", files), stage("dpo", files)])
    assert cli.main(["pipeline", "--config", config]) == 0
    run = tmp_path / "run"
    for name in ("sft", "dpo"):
        assert (run / name / "DONE").is_file() and (run / name / "summary.json").is_file()
    lineage = json.loads((run / "dpo" / "lineage.json").read_text())
    sft_done = json.loads((run / "sft" / "DONE").read_text())
    assert lineage["inputs"]["model"] == {"name_or_path": str(run / "sft"), "stage": "sft",
                                          "config_hash": sft_done["config_hash"]}
    assert lineage["config_hash"] == json.loads((run / "dpo" / "DONE").read_text())["config_hash"]
    assert lineage["data"]["sources"][0]["sha256"] and lineage["data"]["fingerprint"]
    assert lineage["tokenizer"] == json.loads((run / "sft" / "lineage.json").read_text())["tokenizer"]
    assert json.loads((run / "dpo" / "summary.json").read_text())["reference"].startswith("frozen copy")

    mtimes = {name: (run / name / "DONE").stat().st_mtime_ns for name in ("sft", "dpo")}
    lines = {name: len(tracking.read_metrics(run / name)) for name in ("sft", "dpo")}
    capsys.readouterr()
    assert cli.main(["pipeline", "--config", config]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
    assert {name: (run / name / "DONE").stat().st_mtime_ns for name in mtimes} == mtimes
    assert {name: len(tracking.read_metrics(run / name)) for name in lines} == lines

    # A changed config for a finished stage is an error until --from (or --force) says to rerun it.
    assert cli.main(["pipeline", "--config", config, "dpo.beta=0.3"]) == 2
    assert "stages[1] (dpo): its config changed" in capsys.readouterr().err
    assert cli.main(["pipeline", "--config", config, "--from", "dpo", "dpo.beta=0.3"]) == 0
    assert (run / "sft" / "DONE").stat().st_mtime_ns == mtimes["sft"]
    assert (run / "dpo" / "DONE").stat().st_mtime_ns != mtimes["dpo"]
    assert loss_steps(run / "dpo") == [1, 2], "a rerun starts over with fresh metrics"
    assert "beta: 0.3" in (run / "dpo" / "config.yaml").read_text()


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_interrupted_stage_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, files):
    config = write(tmp_path, tiny_model_dir, [stage("sft", files),
                                              stage("dpo", files, train={"max_steps": 4, "save_steps": 2})])
    assert cli.main(["pipeline", "--config", config]) == 0
    run = tmp_path / "run"
    sft_done = (run / "sft" / "DONE").stat().st_mtime_ns
    # Interrupted after step 2: no DONE, no summary, no later checkpoint.
    for name in ("DONE", "summary.json"):
        (run / "dpo" / name).unlink()
    import shutil

    shutil.rmtree(run / "dpo" / "checkpoint-4")

    assert cli.main(["pipeline", "--config", config]) == 0
    assert (run / "dpo" / "DONE").is_file()
    # The stage continues from checkpoint-2; the rows the interrupted run logged past it are replaced, not repeated.
    assert loss_steps(run / "dpo") == [1, 2, 3, 4]
    assert (run / "sft" / "DONE").stat().st_mtime_ns == sft_done
    summary = json.loads((run / "dpo" / "summary.json").read_text())
    assert summary["metrics"]["steps"] == 4


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_sft_lora_then_reward_then_dpo_merge(tmp_path, tiny_model_dir, files):
    lora = {"model": {"lora": {"enabled": True, "rank": 4}}}
    config = write(tmp_path, tiny_model_dir, [stage("sft", files, **lora), stage("reward", files),
                                              stage("dpo", files, **lora)])
    assert cli.main(["pipeline", "--config", config]) == 0
    run = tmp_path / "run"
    assert (run / "sft" / "adapter_config.json").is_file()
    assert not (run / "reward" / "adapter_config.json").exists(), "the reward stage fine-tunes the merged sft model"
    reward_lineage = json.loads((run / "reward" / "lineage.json").read_text())
    assert reward_lineage["inputs"]["model"]["stage"] == "sft"
    adapter = json.loads((run / "dpo" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((run / "sft").resolve()), "dpo adapter stacks on the sft merge"
    dpo_summary = json.loads((run / "dpo" / "summary.json").read_text())
    assert "LoRA adapter disabled" in dpo_summary["reference"]
    assert "eval_accuracy" in json.loads((run / "reward" / "summary.json").read_text())["metrics"]


def test_stage_configs_get_the_wiring_and_one_wandb_group(tmp_path, tiny_model_dir, files):
    ppo = {"name": "ppo", "config": {"data": {"train": [files["pairs"]]}, "train": {"max_steps": 1},
                                     "ppo": {"rollout_batch_size": 2, "micro_batch": 2}}}
    config = write(tmp_path, tiny_model_dir, [stage("sft", files), stage("reward", files), ppo],
                   tracking={"backend": "wandb", "project": "p"})
    plans = pipeline.resolve(pipeline.load(config))
    run = tmp_path / "run"
    assert [p.cfg.model.name_or_path for p in plans] == [str(tiny_model_dir), str(run / "sft"), str(run / "sft")]
    assert plans[2].cfg.reward_model.name_or_path == str(run / "reward")
    assert [p.cfg.train.output_dir for p in plans] == [str(run / n) for n in ("sft", "reward", "ppo")]
    assert {(p.cfg.tracking.group, p.cfg.tracking.backend, p.cfg.tracking.project) for p in plans} == {
        ("run", "wandb", "p")}
    assert [p.cfg.tracking.name for p in plans] == ["run-sft", "run-reward", "run-ppo"]
    assert cli.main(["validate", config]) == 0


def test_a_reward_section_with_only_probe_keys_still_gets_the_reward_stage_model(tmp_path, tiny_model_dir, files):
    ppo = {"name": "ppo", "config": {"data": {"train": [files["pairs"]]}, "reward_model": {"probe_threshold": 1.0},
                                     "ppo": {"rollout_batch_size": 2, "micro_batch": 2}}}
    plans = pipeline.resolve(pipeline.load(write(tmp_path, tiny_model_dir, [stage("reward", files), ppo])))
    wired = plans[1].cfg.reward_model
    assert (wired.name_or_path, wired.function, wired.probe_threshold) == (str(tmp_path / "run" / "reward"), None, 1.0)


BAD = {
    "unknown stage": (lambda f: {"name": "dop", "config": {}},
                      "stages[1].name: unknown stage 'dop'. Did you mean 'dpo'"),
    "missing input file": (lambda f: stage("dpo", f, data={"train": ["/no/such/pairs.jsonl"]}),
                           "stages[1] (dpo): data.train[0].path: file not found: /no/such/pairs.jsonl"),
    "missing reference": (lambda f: stage("dpo", f, reference="/no/such/model"),
                          "stages[1] (dpo): reference: model path '/no/such/model' does not exist"),
    "typo in a stage key": (lambda f: stage("dpo", f, betta=0.2),
                            "stages[1] (dpo): invalid config: betta: unknown key. Did you mean 'beta'?"),
    "ppo without reward model": (lambda f: {"name": "ppo", "config": {"data": {"train": [f["pairs"]]}}},
                                 "stages[1] (ppo): invalid config: reward_model: required field is missing"),
    "chat template changed": (lambda f: stage("dpo", f, model={"chat_template": "{{ messages }}"}),
                              "stages[1] (dpo): the tokenizer of model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_pipelines_exit_2_naming_the_stage_before_training(tmp_path, tiny_model_dir, files, capsys, case):
    make, message = BAD[case]
    config = write(tmp_path, tiny_model_dir, [stage("sft", files), make(files)])
    assert cli.main(["pipeline", "--config", config]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "run").exists(), "nothing is trained or written"
