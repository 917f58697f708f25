"""Strict config loading: unknown keys, types, required fields, overrides, cross-field rules, round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from align import config, stages
from align.errors import ConfigError
from align.stages.sft import SFTConfig

MINIMAL = {
    "model": {"name_or_path": "some/model"},
    "data": {"train": ["train.jsonl"]},
    "train": {"output_dir": "out"},
}


def write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Inner:
    beta: float = 0.1
    loss: Literal["sigmoid", "ipo"] = "sigmoid"


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    steps: int = 1
    tags: list[str] = field(default_factory=list)


def test_unknown_key_names_dotted_path_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load_config(Outer, write(tmp_path, {"name": "x", "inner": {"betta": 0.2}}))
    assert "inner.betta: unknown key. Did you mean 'beta'?" in str(e.value)


def test_unknown_override_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_stpes: unknown key\. Did you mean 'max_steps'\?"):
        config.load_config(SFTConfig, write(tmp_path, MINIMAL), ["train.max_stpes=3"])


def test_wrong_type_and_missing_field_reported_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load_config(Outer, write(tmp_path, {"steps": "ten", "inner": {"loss": "sigmod"}}))
    msg = str(e.value)
    assert "steps: expected int, got str 'ten'" in msg
    assert "name: required field is missing" in msg
    assert "inner.loss: must be one of 'sigmoid', 'ipo', got 'sigmod'. Did you mean 'sigmoid'?" in msg


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="steps: expected int, got bool"):
        config.load_config(Outer, None, ["name=x", "steps=true"])


def test_overrides_are_typed_and_nested():
    cfg = config.load_config(SFTConfig, None, ["model.name_or_path=m", "data.train=[a.jsonl, b.jsonl]",
                                               "train.output_dir=o", "train.learning_rate=1e-4",
                                               "train.max_steps=2", "model.lora.enabled=true"])
    assert cfg.train.learning_rate == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string; we accept it
    assert cfg.train.max_steps == 2
    assert [s.path for s in cfg.data.train] == ["a.jsonl", "b.jsonl"]
    assert cfg.model.lora.enabled is True


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.parse_overrides(["train.max_steps"])


def test_cross_field_rules_are_collected(tmp_path):
    data = {**MINIMAL, "train": {"output_dir": "o", "batch_size": 0, "resume": True, "overwrite": True},
            "save_merged": True}
    with pytest.raises(ConfigError) as e:
        config.load_config(SFTConfig, write(tmp_path, data))
    msg = str(e.value)
    assert "train.batch_size: must be > 0, got 0" in msg
    assert "train.resume: resume=true and overwrite=true contradict" in msg
    assert "save_merged: only applies with model.lora.enabled=true" in msg


def test_trainer_overrides_checked_against_trl_config(tmp_path):
    data = {**MINIMAL, "trainer_overrides": {"neftune_noise_alpah": 5, "learning_rate": 1.0, "dataloader_num_workers": 0}}
    with pytest.raises(ConfigError) as e:
        config.load_config(SFTConfig, write(tmp_path, data))
    msg = str(e.value)
    assert "trainer_overrides.neftune_noise_alpah: not a field of trl.SFTConfig. Did you mean 'neftune_noise_alpha'?" in msg
    assert "trainer_overrides.learning_rate: set by align; use train.learning_rate instead" in msg
    assert "dataloader_num_workers" not in msg


def test_resolved_config_round_trips(tmp_path):
    cfg = config.load_config(SFTConfig, write(tmp_path, MINIMAL), ["train.max_steps=7", "tracking.tags=[a, b]"])
    path = config.save_config(cfg, tmp_path / "out")
    again = config.load_config(SFTConfig, path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["stage"] == "sft"


def test_stage_mismatch_is_refused(tmp_path):
    path = write(tmp_path, {**MINIMAL, "stage": "dpo"})
    with pytest.raises(ConfigError, match="this is a 'dpo' config"):
        stages.load("sft", path)


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config.read_yaml(path)
