"""Hyper-parameters changed on resume: the learning rate and schedule apply from the checkpoint on (and the run says
so in its log and summary.json), keys the checkpoint fixes (batch size, data, model...) are refused naming them, and
the NaN alert's advice (resume with a lower learning rate) gets past the step that NaN'd."""

from __future__ import annotations

import re

import pytest
from faults import interrupt_at, logged_steps, stage_config, summary, write_config

from align import cli, models
from align.observe import tracking


def run(capsys, path, *overrides: str) -> tuple[int, str]:
    code = cli.main(["sft", "--config", str(path), *overrides])
    return code, capsys.readouterr().err


def rates(out) -> dict[int, float]:
    return {row["step"]: row["learning_rate"] for row in tracking.read_metrics(out) if "learning_rate" in row}


@pytest.mark.slow  # 2-4 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_the_nan_advice_works(tmp_path, tiny_model_dir, capsys):
    """Warmed up to a learning rate of 160 over 4 of 8 steps, the tiny model's loss goes non-finite at step 4 (3 or
    4: where exactly a diverging run overflows can differ between CPUs), after checkpoint-2. Resumed at the same rate
    it NaNs at the same step again; resumed with a lower rate, as the alert advises, it trains to the end."""
    out = tmp_path / "out"
    path = write_config(tmp_path / "sft.yaml", stage_config(
        tmp_path, "sft", tiny_model_dir, out, learning_rate=160.0, max_steps=8, lr_scheduler="constant_with_warmup",
        warmup_ratio=0.5))
    code, err = run(capsys, path)
    found = re.search(r"non_finite_loss at step (\d+)", err)
    assert code == 2 and found and int(found[1]) in (3, 4), err
    nan_step = int(found[1])
    advice = summary(out)["health"]["stopped_on_fatal"]["message"]
    assert "train.resume=true and a lower train.learning_rate" in advice

    code, err = run(capsys, path, "train.resume=true")
    assert code == 2 and f"non_finite_loss at step {nan_step}" in err, "the same rate NaNs at the same step"
    before = rates(out)

    code, err = run(capsys, path, "train.resume=true", "train.learning_rate=1e-3")
    assert code == 0, err
    assert summary(out)["metrics"]["steps"] == 8
    after = rates(out)
    assert after[2] == before[2] and before[3] > 1.0
    assert all(after[step] == pytest.approx(before[step] * 1e-3 / 160) for step in range(3, nan_step + 1)), \
        "the warmup, rescaled"
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6, 7, 8], "the NaN'd runs' rows past checkpoint-2 are replaced"
    assert summary(out)["resumed"] == {"from": str(out / "checkpoint-2"), "step": 2,
                                       "changed": {"train.learning_rate": [160.0, 1e-3]}}


@pytest.mark.slow
def test_a_changed_schedule_applies_at_the_first_resumed_step(tmp_path, tiny_model_dir, capsys, caplog):
    new = ["train.max_steps=4", "train.lr_scheduler=linear", "train.learning_rate=0.02"]
    straight = tmp_path / "straight"
    path = write_config(tmp_path / "straight.yaml", stage_config(tmp_path, "sft", tiny_model_dir, straight))
    assert run(capsys, path, *new)[0] == 0
    out = tmp_path / "out"
    path = write_config(tmp_path / "sft.yaml", stage_config(tmp_path, "sft", tiny_model_dir, out, max_steps=2))
    assert run(capsys, path)[0] == 0
    code, err = run(capsys, path, "train.resume=true", *new)
    assert code == 0, err
    assert "train.lr_scheduler changed from 'constant' to 'linear'; it applies from the checkpoint on" in caplog.text
    assert rates(out)[3] == pytest.approx(rates(straight)[3]) and rates(out)[4] == pytest.approx(rates(straight)[4])
    assert rates(out)[4] < rates(out)[3], "decaying, not constant"


def test_keys_the_checkpoint_fixes_are_refused_before_the_weights_load(tmp_path, tiny_model_dir, capsys, monkeypatch):
    out = tmp_path / "out"
    path = write_config(tmp_path / "sft.yaml", stage_config(tmp_path, "sft", tiny_model_dir, out, max_steps=2))
    assert run(capsys, path)[0] == 0
    config_before = (out / "config.yaml").read_text()
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("weights loaded"))
    code, err = run(capsys, path, "train.resume=true", "train.max_steps=4", "train.batch_size=1",
                    "model.lora.enabled=true")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: train.resume: ")
    assert "model.lora.enabled: False -> True; train.batch_size: 2 -> 1" in err
    assert "cannot change on resume" in err and "train.max_steps" not in err
    assert (out / "config.yaml").read_text() == config_before, "the refused run's config is not recorded"


@pytest.mark.slow
def test_a_pipeline_resumes_an_interrupted_stage_with_a_new_learning_rate(tmp_path, tiny_model_dir, capsys,
                                                                        monkeypatch):
    def pipeline_yaml(dpo_train: dict) -> str:
        stages = []
        for name, train in (("sft", {"max_steps": 2}), ("dpo", {"max_steps": 4, **dpo_train})):
            cfg = stage_config(tmp_path, name, tiny_model_dir, tmp_path / "unused", **train)
            del cfg["train"]["output_dir"]
            stages.append({"name": name, "config": {"data": cfg["data"], "train": cfg["train"]}})
        return str(write_config(tmp_path / "pipeline.yaml", {"stage": "pipeline", "run_dir": str(tmp_path / "run"),
                                                             "model": {"name_or_path": str(tiny_model_dir)},
                                                             "stages": stages}))

    interrupt_at(monkeypatch, 3)  # DPO's step 3
    assert cli.main(["pipeline", "--config", pipeline_yaml({})]) == 130
    capsys.readouterr()
    code = cli.main(["pipeline", "--config", pipeline_yaml({"batch_size": 1})])
    err = capsys.readouterr().err
    assert code == 2 and "train.batch_size: 2 -> 1" in err and "start it over with --from dpo" in err
    assert cli.main(["pipeline", "--config", pipeline_yaml({"learning_rate": 1e-3})]) == 0
    out = tmp_path / "run" / "dpo"
    assert summary(out)["resumed"]["changed"] == {"train.learning_rate": [0.01, 1e-3]}
    assert rates(out)[3] == pytest.approx(1e-3) and logged_steps(out) == [1, 2, 3, 4]
