"""Every stage on a TRL trainer (SFT, reward, DPO, KTO, ORPO, SimPO, GRPO, RLOO) interrupted twice (after steps 3
and 5 of 6, checkpoints every 2) and resumed twice ends where a run without interruption ends: the same weights bit
for bit, the same train_loss, each step logged once, and the health monitor's history of the whole run. PPO's double
resume is tests/reliability/test_ppo_double_resume.py; the pipeline's is below."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from faults import interrupt_at, logged_steps, stage_config, summary, write_config
from safetensors.torch import load_file

from align import cli


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("stage", ["sft", *(pytest.param(stage, marks=pytest.mark.slow)
                                           for stage in ("reward", "dpo", "kto", "orpo", "simpo", "grpo", "rloo"))])
def test_interrupted_twice_resumes_to_the_straight_run(tmp_path, tiny_model_dir, monkeypatch, stage):
    model = tiny_model_dir  # the reward stage puts a seeded score head on it
    straight, out = tmp_path / "straight", tmp_path / "out"
    path = write_config(tmp_path / "a.yaml", stage_config(tmp_path, stage, model, straight, max_steps=6))
    assert cli.main([stage, "--config", str(path)]) == 0

    path = write_config(tmp_path / "b.yaml", stage_config(tmp_path, stage, model, out, max_steps=6))
    interrupt_at(monkeypatch, 3, 5)
    assert cli.main([stage, "--config", str(path)]) == 130
    assert cli.main([stage, "--config", str(path), "train.resume=true"]) == 130
    assert cli.main([stage, "--config", str(path), "train.resume=true"]) == 0

    assert same_weights(straight, out)
    a, b = summary(straight), summary(out)
    assert b["metrics"]["steps"] == 6
    assert b["metrics"]["train_loss"] == pytest.approx(a["metrics"]["train_loss"], rel=1e-6)
    assert b["resumed"] == {"from": str(out / "checkpoint-4"), "step": 4, "changed": {}}
    assert logged_steps(out) == logged_steps(straight) == [1, 2, 3, 4, 5, 6]
    # The health monitor's history spans the whole run, as in the straight run's last checkpoint.
    history = [json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())["stateful_callbacks"]
               ["HealthCallback"]["attributes"]["history"]["loss"] for run in (straight, out)]
    assert len(history[1]) == 6 and history[0] == pytest.approx(history[1])
    assert b["health"] == a["health"]
    if "tokens_per_s" in a["metrics"]:  # this run's tokens over this run's time, not the whole run's tokens
        seen = [json.loads((out / f"checkpoint-{n}" / "trainer_state.json").read_text())["num_input_tokens_seen"]
                for n in (4, 6)]
        m = b["metrics"]
        assert m["tokens_per_s"] * m["train_runtime_s"] == pytest.approx(seen[1] - seen[0], rel=0.05)


@pytest.mark.slow
def test_a_pipeline_interrupted_in_each_stage_resumes_to_the_straight_run(tmp_path, tiny_model_dir, monkeypatch):
    def pipeline_yaml(run_dir) -> str:
        stages = [{"name": name, "config": {key: stage_config(tmp_path, name, tiny_model_dir, tmp_path / "unused",
                                                              max_steps=4)[key] for key in ("data", "train")}}
                  for name in ("sft", "dpo")]
        for entry in stages:
            del entry["config"]["train"]["output_dir"]
        path = tmp_path / f"{run_dir.name}.yaml"
        path.write_text(yaml.safe_dump({"stage": "pipeline", "run_dir": str(run_dir),
                                        "model": {"name_or_path": str(tiny_model_dir)}, "stages": stages}))
        return str(path)

    straight, run = tmp_path / "straight", tmp_path / "run"
    assert cli.main(["pipeline", "--config", pipeline_yaml(straight)]) == 0
    interrupt_at(monkeypatch, 3, 3)  # in the SFT stage, then in the DPO stage
    path = pipeline_yaml(run)
    assert cli.main(["pipeline", "--config", path]) == 130
    assert cli.main(["pipeline", "--config", path]) == 130
    assert cli.main(["pipeline", "--config", path]) == 0
    for name in ("sft", "dpo"):
        assert same_weights(straight / name, run / name), name
        assert logged_steps(run / name) == [1, 2, 3, 4], name
        assert summary(run / name)["metrics"]["train_loss"] == pytest.approx(
            summary(straight / name)["metrics"]["train_loss"], rel=1e-6)
