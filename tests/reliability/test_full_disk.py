"""A full disk while a checkpoint is written: one `error:` line that says "no space left on device" and names the
path, exit 2, the partial checkpoint removed (it holds space and is not resumable), the last complete checkpoint kept;
the run then resumes from it. Simulated by making the save fail mid-write as a full disk does: an OSError with ENOSPC
from the weights writer (SFT), torch's zip writer's short-write RuntimeError (PPO's optimizer state)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils
from faults import logged_steps, stage_config, summary, write_config

from align import cli, rundir


def refused(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err  # the progress bar ended its line
    return errors[0]


def test_sft_checkpoint_on_a_full_disk(tmp_path, tiny_model_dir, capsys, monkeypatch):
    out = tmp_path / "out"
    path = write_config(tmp_path / "sft.yaml", stage_config(tmp_path, "sft", tiny_model_dir, out))
    real, calls = transformers.modeling_utils.safe_save_file, []

    def full_disk(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # checkpoint-4's weights
            Path(filename).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    line = refused(capsys, ["sft", "--config", str(path)])
    assert line.startswith(f"error: no space left on device while writing {out / 'checkpoint-4' / 'model.safetensors'}")
    assert f"removed the partial checkpoint-4; the last complete checkpoint {out / 'checkpoint-2'} is intact" in line
    assert rundir.checkpoints(out) == ([out / "checkpoint-2"], []) and not (out / rundir.LOCK_FILE).exists()

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", real)
    assert cli.main(["sft", "--config", str(path), "train.resume=true"]) == 0
    assert summary(out)["metrics"]["steps"] == 4 and logged_steps(out) == [1, 2, 3, 4]


@pytest.mark.slow
def test_ppo_checkpoint_on_a_full_disk(tmp_path, tiny_model_dir, tiny_reward_model_dir, capsys, monkeypatch):
    out = tmp_path / "out"
    path = write_config(tmp_path / "ppo.yaml", stage_config(tmp_path, "ppo", tiny_model_dir, out,
                                                            reward_dir=tiny_reward_model_dir))
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith("tmp-checkpoint-4/training_state.pt"):
            Path(f).write_bytes(b"\0" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 7385664 vs 7385552")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    line = refused(capsys, ["ppo", "--config", str(path)])
    assert line.startswith(f"error: no space left on device while writing {out}: removed the partial "
                           "tmp-checkpoint-4; ")
    assert f"the last complete checkpoint {out / 'checkpoint-2'} is intact" in line
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-2"]

    monkeypatch.setattr(torch, "save", real)
    assert cli.main(["ppo", "--config", str(path), "train.resume=true"]) == 0
    assert summary(out)["metrics"]["steps"] == 4 and logged_steps(out) == [1, 2, 3, 4]
