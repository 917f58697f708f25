"""Config mistakes that used to end in a traceback or a misleading error are refused as one `error:` line with exit
2. Before the weights load: an unknown lr_scheduler, a chat_template path that is not a file, an output_dir that is a
file or cannot be written, flash attention on CPU, a directory that is not a model, a model with its own code without
trust_remote_code (refused when its config is read). Once they load: LoRA target modules the model lacks, a
trainer_overrides value TRL rejects. And `align validate` checks a sweep's trial configs."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
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


@pytest.mark.parametrize("template", ["templates/chat.jinja", "missing.j2", "./no/such/file"])
def test_a_chat_template_path_that_is_not_a_file(tmp_path, tiny_model_dir, capsys, no_model_load, template):
    path = stage_yaml(tmp_path, "sft", tiny_model_dir, model={"chat_template": template})
    err = refused(capsys, ["sft", "--config", path])
    assert f"model.chat_template: {template!r} looks like a path but is not a file" in err


def test_an_inline_chat_template_and_a_template_file_still_work(tmp_path, tiny_model_dir):
    from align.models import load_tokenizer
    from align.sections import ModelConfig

    inline = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load_tokenizer(ModelConfig(str(tiny_model_dir), chat_template=inline)).chat_template == inline
    file = tmp_path / "chat.jinja"
    file.write_text(inline)
    assert load_tokenizer(ModelConfig(str(tiny_model_dir), chat_template=str(file))).chat_template == inline


def test_output_dir_that_is_a_file(tmp_path, tiny_model_dir, capsys, no_model_load):
    (tmp_path / "out").write_text("a file where the run dir goes")
    err = refused(capsys, ["sft", "--config", stage_yaml(tmp_path, "sft", tiny_model_dir)])
    assert f"train.output_dir: {tmp_path / 'out'} is a file" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
@pytest.mark.parametrize("kernel", ["flash_attention_2", "flash_attention_3"])
def test_flash_attention_on_cpu(tmp_path, tiny_model_dir, capsys, kernel):
    path = stage_yaml(tmp_path, "sft", tiny_model_dir, model={"attn_implementation": kernel})
    err = refused(capsys, ["sft", "--config", path])
    assert f"model.attn_implementation: {kernel} needs a CUDA GPU" in err and "sdpa" in err


@pytest.mark.parametrize(("targets", "named"), [
    (["q_proj", "qkv_proj"], "'qkv_proj' not in the model"),
    (["mlp"], "'mlp' (LlamaMLP) not a layer LoRA can adapt"),
])
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_lora_targets_the_model_lacks(tmp_path, tiny_model_dir, capsys, stage, targets, named):
    path = stage_yaml(tmp_path, stage, tiny_model_dir, model={"lora": {"enabled": True, "target_modules": targets}})
    err = refused(capsys, [stage, "--config", path])
    assert f"model.lora.target_modules: {named}" in err and "q_proj" in err.split("adapt:")[-1]


def test_a_directory_that_is_not_a_model(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "not-a-model"
    (empty / "notes").mkdir(parents=True)
    path = stage_yaml(tmp_path, "sft", tiny_model_dir, model={"name_or_path": str(empty)})
    err = refused(capsys, ["sft", "--config", path])
    assert f"model path {str(empty)!r} is a directory but not a model" in err and "config.json" in err


def test_validate_checks_a_sweeps_trials(tmp_path, tiny_model_dir, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"stage": "sweep", "base": stage_yaml(tmp_path, "dpo", tiny_model_dir),
                                     "run_dir": str(tmp_path / "sweep"), "method": "grid",
                                     "parameters": {"bta": [0.1, 0.3]}, "metric": "eval_loss", "mode": "min"}))
    assert cli.main(["validate", str(sweep)]) == 2
    assert "bta: unknown key. Did you mean 'beta'?" in capsys.readouterr().out
    assert not (tmp_path / "sweep").exists(), "validating writes nothing"


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_a_trainer_overrides_value_trl_rejects(tmp_path, tiny_model_dir, capsys, stage):
    path = stage_yaml(tmp_path, stage, tiny_model_dir, trainer_overrides={"optim": "adamw_nope"})
    err = refused(capsys, [stage, "--config", path])
    assert "trainer_overrides: " in err and "adamw_nope" in err


def test_a_model_with_custom_code_without_trust_remote_code(tmp_path, tiny_model_dir, capsys):
    custom = tmp_path / "custom-model"
    shutil.copytree(tiny_model_dir, custom)
    config_file = custom / "config.json"
    settings = json.loads(config_file.read_text())
    settings.update(model_type="tiny_custom", auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                                                        "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    config_file.write_text(json.dumps(settings))
    path = stage_yaml(tmp_path, "sft", tiny_model_dir, model={"name_or_path": str(custom)})
    err = refused(capsys, ["sft", "--config", path])
    assert "trust_remote_code" in err and str(custom) in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_dir_that_cannot_be_written(tmp_path, tiny_model_dir, capsys, no_model_load):
    # root ignores permission bits; /proc refuses new directories to anyone.
    path = stage_yaml(tmp_path, "sft", tiny_model_dir, train={"output_dir": "/proc/align-out"})
    err = refused(capsys, ["sft", "--config", path])
    assert "train.output_dir: cannot write in /proc/align-out" in err
