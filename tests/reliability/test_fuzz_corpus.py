"""A corpus of malformed data files and config mistakes, each through the command line as a user meets it: exit 2,
exactly one `error:` line, no traceback, and (for stage commands) before any weights load."""

from __future__ import annotations

import json

import pytest
import yaml
from faults import stage_config

from align import cli, models

SFT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD_FILES = {
    "empty.jsonl": b"",
    "blank_lines.jsonl": b"\n\n  \n",
    "binary.jsonl": bytes(range(256)) * 4,
    "truncated_line.jsonl": (json.dumps(SFT_ROW) + "\n" + json.dumps(SFT_ROW)[:25]).encode(),
    "unclosed_array.json": b'[{"messages": []}, ',
    "top_level_string.json": b'"just a string"',
    "not_objects.jsonl": b"1\n2\n3\n",
    "null_rows.jsonl": b"null\nnull\n",
    "missing_messages.jsonl": b'{"text_only": "hello"}\n',
    "messages_not_a_list.jsonl": b'{"messages": "hello"}\n',
    "unknown_role.jsonl": json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode() + b"\n",
    "content_is_a_number.jsonl": json.dumps({"messages": [{"role": "user", "content": 7},
                                                          {"role": "assistant", "content": 8}]}).encode() + b"\n",
    "no_assistant_turn.jsonl": json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode() + b"\n",
    "deeply_nested.jsonl": b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
    "duplicate_keys.jsonl": b'{"messages": [], "messages": []}\n',
    "preference_rows_for_sft.jsonl": json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode() + b"\n",
    "utf16.jsonl": (json.dumps(SFT_ROW) + "\n").encode("utf-16"),
    "garbage.parquet": b"PAR1 this is not parquet",
    "garbage.csv": b'"unclosed,quote\n1,2,3\n',
    "unknown_extension.xyz": b"whatever",
}


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("the weights loaded first"))


def refused(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err[-2000:])
    return lines[0]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_malformed_data_file(tmp_path, tiny_model_dir, capsys, no_model_load, name):
    bad = tmp_path / name
    bad.write_bytes(BAD_FILES[name])
    cfg = stage_config(tmp_path, "sft", tiny_model_dir, tmp_path / "out")
    cfg["data"]["train"] = [str(bad)]
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    line = refused(capsys, ["sft", "--config", str(path)])
    assert name in line or "data" in line, line


def config_cases(tmp_path, model) -> dict[str, tuple[list[str], str]]:
    """name -> (command line, what the error line must say)."""
    good = stage_config(tmp_path, "sft", model, tmp_path / "out")

    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    def with_(**changes) -> str:
        cfg = json.loads(json.dumps(good))
        for dotted, value in changes.items():
            section, key = dotted.split("__")
            cfg[section][key] = value
        return write(f"{'-'.join(changes)}.yaml", yaml.safe_dump(cfg))

    ok = write("ok.yaml", yaml.safe_dump(good))
    return {
        "yaml_syntax": (["sft", "--config", write("syntax.yaml", "train: {output_dir: [")], "not valid YAML"),
        "top_level_list": (["sft", "--config", write("list.yaml", "- a\n- b\n")], "top level must be a mapping"),
        "missing_file": (["sft", "--config", str(tmp_path / "nope.yaml")], "config file not found"),
        "config_is_a_dir": (["sft", "--config", str(tmp_path)], "config file not found"),
        "unknown_key": (["sft", "--config", with_(train__learnin_rate=0.1)], "Did you mean 'learning_rate'"),
        "wrong_type": (["sft", "--config", with_(train__max_steps="many")], "train.max_steps"),
        "bool_for_int": (["sft", "--config", with_(train__batch_size=True)], "train.batch_size"),
        "negative_steps": (["sft", "--config", with_(train__max_steps=-5)], "max_steps"),
        "zero_batch": (["sft", "--config", with_(train__batch_size=0)], "batch_size"),
        "warmup_ratio_one": (["sft", "--config", with_(train__warmup_ratio=1.0)], "warmup_ratio"),
        "resume_and_overwrite": (["sft", "--config", ok, "train.resume=true", "train.overwrite=true"],
                                 "contradict"),
        "stage_mismatch": (["dpo", "--config", ok], "sft"),
        "override_without_equals": (["sft", "--config", ok, "train.max_steps"], "train.max_steps"),
        "override_unknown_key": (["sft", "--config", ok, "train.max_stepz=3"], "Did you mean 'max_steps'"),
        "missing_model": (["sft", "--config", with_(model__name_or_path=str(tmp_path / "no-model"))], "no-model"),
        "unknown_dtype": (["sft", "--config", with_(model__dtype="fp8")], "model.dtype"),
        "pipeline_unknown_stage": (["pipeline", "--config", write("p.yaml", yaml.safe_dump(
            {"stage": "pipeline", "run_dir": str(tmp_path / "run"), "model": {"name_or_path": str(model)},
             "stages": [{"name": "sftt", "config": {}}]}))], "sftt"),
        "sweep_unknown_parameter": (["sweep", "--config", write("s.yaml", yaml.safe_dump(
            {"stage": "sweep", "base": ok, "run_dir": str(tmp_path / "sw"),
             "parameters": {"train.learnin_rate": [0.1]}}))], "learnin_rate"),
    }


CASES = ["yaml_syntax", "top_level_list", "missing_file", "config_is_a_dir", "unknown_key", "wrong_type",
         "bool_for_int", "negative_steps", "zero_batch", "warmup_ratio_one", "resume_and_overwrite", "stage_mismatch",
         "override_without_equals", "override_unknown_key", "missing_model", "unknown_dtype",
         "pipeline_unknown_stage", "sweep_unknown_parameter"]


@pytest.mark.parametrize("case", CASES)
def test_a_config_mistake(tmp_path, tiny_model_dir, capsys, no_model_load, case):
    argv, says = config_cases(tmp_path, tiny_model_dir)[case]
    assert says in refused(capsys, argv)
