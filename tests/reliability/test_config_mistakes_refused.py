"""Config mistakes that used to end in a traceback (often after the weights loaded) are refused as one `error:` line
with exit 2: an unknown lr_scheduler, ..."""

from __future__ import annotations

import json

import pytest
import transformers
import yaml
from tiny import CONVERSATIONS, PAIRS, messages, write_pairs

from align import cli, models, sections


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the weights loaded before the mistake was refused")

    monkeypatch.setattr(models, "load_causal_lm", refuse)


def stage_yaml(tmp_path, stage: str, model_dir, **sections_) -> str:
    if stage == "dpo":
        train = write_pairs(tmp_path / "train.jsonl", PAIRS[:4])
    else:
        train = tmp_path / "train.jsonl"
        train.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in CONVERSATIONS[:4]))
    config = {"stage": stage, "model": {"name_or_path": str(model_dir)}, "data": {"train": [str(train)]},
              "train": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 2, "max_length": 64,
                        "num_threads": 1}}
    for name, values in sections_.items():
        config[name] = {**config.get(name, {}), **values}
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def refused(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_unknown_lr_scheduler(tmp_path, tiny_model_dir, capsys, no_model_load, stage):
    path = stage_yaml(tmp_path, stage, tiny_model_dir, train={"lr_scheduler": "cosin"})
    err = refused(capsys, [stage, "--config", path])
    assert "train.lr_scheduler: unknown scheduler 'cosin'" in err and "Did you mean 'cosine'?" in err


def test_the_scheduler_list_is_transformers_own():
    assert set(sections.LR_SCHEDULERS) == {s.value for s in transformers.SchedulerType}
