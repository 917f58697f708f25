"""The CLI: fast help without torch, exit code 2 with one `error:` line for user errors, tracebacks for bugs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align import cli

REPO = Path(__file__).resolve().parents[1]


def sft_yaml(tmp_path, **extra):
    data = {"stage": "sft", "model": {"name_or_path": str(tmp_path / "model")},
            "data": {"train": [str(tmp_path / "train.jsonl")]}, "train": {"output_dir": str(tmp_path / "out")}}
    data.update(extra)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; import align.cli; sys.argv=['align','--help']\ntry:\n align.cli.main()\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")
    assert "sft" in out.stdout and "validate" in out.stdout


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_console_script_reports_config_typo_with_exit_2(tmp_path):
    path = sft_yaml(tmp_path, tracking={"projct": "x"})
    out = subprocess.run([sys.executable, "-m", "align.cli", "sft", "--config", str(path)],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ")
    assert len(out.stderr.strip().splitlines()) == 1
    assert "tracking.projct: unknown key. Did you mean 'project'?" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists(), "nothing is written before the config is valid"


def test_override_typo_exits_2(tmp_path, capsys):
    assert cli.main(["sft", "--config", str(sft_yaml(tmp_path)), "train.learning_rat=1e-5"]) == 2
    assert "Did you mean 'learning_rate'?" in capsys.readouterr().err


def test_missing_model_dir_is_a_user_error_before_training(tmp_path, capsys):
    path = sft_yaml(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    assert cli.main(["sft", "--config", str(path), f"model.name_or_path={tmp_path}/nope"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "nope" in err


def test_internal_bug_shows_traceback(tmp_path, monkeypatch):
    from align import stages

    def boom(stage, cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(stages, "run", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["sft", "--config", str(sft_yaml(tmp_path))])


def test_validate_shipped_configs_exit_0(capsys):
    assert cli.main(["validate", str(REPO / "configs"), str(REPO / "examples")]) == 0
    assert " 0 invalid" in capsys.readouterr().out


def test_validate_reports_bad_file_exit_2(tmp_path, capsys):
    good = sft_yaml(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stage": "sft", "model": {"name_or_path": "m"}}))
    assert cli.main(["validate", str(good), str(bad)]) == 2
    out = capsys.readouterr().out
    assert f"ok      {good}" in out
    assert "data: required field is missing" in out and "train: required field is missing" in out


def test_validate_reads_the_configs_eval_and_probe_save(tmp_path, capsys):
    from align import config
    from align.eval import EvalConfig
    from align.probe import ProbeConfig

    config.save_config(EvalConfig(policy="policy", data="pairs.jsonl"), tmp_path / "eval")
    probe_file = config.save_config(ProbeConfig(reward_model="reward", data="pairs.jsonl"), tmp_path / "probe")
    assert cli.main(["validate", str(tmp_path)]) == 0
    assert " 0 invalid" in capsys.readouterr().out

    probe_file.write_text(probe_file.read_text().replace("num_samples:", "num_sample:"))
    assert cli.main(["validate", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert f"ok      {tmp_path / 'eval' / 'config.yaml'}" in out
    assert "num_sample: unknown key. Did you mean 'num_samples'?" in out


def test_models_list(capsys):
    assert cli.main(["models", "list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out


def test_unknown_alias_pull_exits_2(capsys):
    assert cli.main(["models", "pull", "no-such-model"]) == 2
    assert "unknown model alias" in capsys.readouterr().err


def test_data_convert_shows_its_summary_once(tmp_path, capsys, caplog):
    """The summary is printed by the command, not also logged by the library it calls."""
    import logging

    caplog.set_level(logging.INFO)
    source = Path(__file__).resolve().parents[1] / "examples" / "data" / "preference.jsonl"
    assert cli.main(["data", "convert", str(source), "--kind", "preference", "--out", str(tmp_path / "out.jsonl")]) == 0
    summary = "trl_preference -> preference (auto: 40/40 sampled rows match); 40 rows in, 40 out"
    assert capsys.readouterr().out.count(summary) == 1
    assert not [r for r in caplog.records if summary in r.getMessage()]
