"""`kill -9` at random points of training (seeded), twice in a row, and in the middle of writing a checkpoint (twice
at the same checkpoint): each time the same command with train.resume=true finishes the run, and it ends where a
run without a kill ends, bit for bit, with every step logged once. Separate processes, so these are slow."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from faults import logged_steps, stage_config, summary, write_config
from safetensors.torch import load_file

from align import cli, rundir

pytestmark = pytest.mark.slow
RUNNER = Path(__file__).with_name("faults.py")


def start(stage: str, path: Path, *overrides: str, fault: str = "") -> subprocess.Popen:
    env = {**os.environ, "ALIGN_FAULT": fault}
    return subprocess.Popen([sys.executable, str(RUNNER), stage, str(path), *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def kill_while_training(proc: subprocess.Popen, out: Path, delay: float) -> bool:
    """SIGKILL `proc` `delay` seconds after its first logged step; False if it finished first."""
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and logged_steps(out)):
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, "training did not start"
        time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def same_weights(a: Path, b: Path, file: str = "model.safetensors") -> bool:
    wa, wb = load_file(str(a / file)), load_file(str(b / file))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def straight_run(tmp_path: Path, stage: str, model: Path, reward: Path, **train) -> Path:
    out = tmp_path / "straight"
    path = write_config(tmp_path / "straight.yaml", stage_config(tmp_path, stage, model, out, reward_dir=reward,
                                                                 **train))
    assert cli.main([stage, "--config", str(path)]) == 0
    return out


def check_finished(out: Path, straight: Path, steps: int) -> None:
    assert summary(out)["metrics"]["steps"] == steps
    assert logged_steps(out) == list(range(1, steps + 1))
    assert same_weights(out, straight)
    assert rundir.checkpoints(out)[1] == [] and not list(out.glob("tmp-checkpoint-*"))


# KILL_TRIALS=20 for a longer campaign; odd seeds kill twice in a row.
@pytest.mark.parametrize(("seed", "kills"), [(seed, 1 + seed % 2)
                                             for seed in range(int(os.environ.get("KILL_TRIALS", "5")))])
def test_kill_at_a_random_point_of_training(tmp_path, tiny_model_dir, record_property, seed, kills):
    """SFT, 30 steps, a checkpoint every 3: killed `kills` times at a random moment (possibly mid-save: recorded as
    the test property `mid_save_kills`, in a junit report with `-o junit_family=legacy`)."""
    train = {"max_steps": 30, "save_steps": 3, "learning_rate": 1e-3}
    straight = straight_run(tmp_path, "sft", tiny_model_dir, None, **train)
    out = tmp_path / "out"
    path = write_config(tmp_path / "sft.yaml", stage_config(tmp_path, "sft", tiny_model_dir, out, **train))
    rng = random.Random(seed)
    overrides: list[str] = []
    mid_save = 0
    for _ in range(kills):
        proc = start("sft", path, *overrides)
        if not kill_while_training(proc, out, rng.uniform(0.0, 1.5)):
            pytest.fail(f"the run finished before the kill: {finish(proc)[1][-2000:]}")
        mid_save += bool(rundir.checkpoints(out)[1] or list(out.glob("tmp-checkpoint-*")))
        overrides = ["train.resume=true"]
    record_property("mid_save_kills", mid_save)
    code, err = finish(start("sft", path, *overrides))
    assert code == 0, err[-3000:]
    check_finished(out, straight, 30)


@pytest.mark.parametrize("stage", ["sft", "dpo", "ppo"])
def test_killed_twice_while_writing_the_same_checkpoint(tmp_path, tiny_model_dir, tiny_reward_model_dir, stage):
    """Killed mid-write of checkpoint-4's weights, then again mid-write of the same checkpoint by the resumed run;
    the third start finishes."""
    straight = straight_run(tmp_path, stage, tiny_model_dir, tiny_reward_model_dir, max_steps=6)
    out = tmp_path / "out"
    path = write_config(tmp_path / "cfg.yaml", stage_config(tmp_path, stage, tiny_model_dir, out, max_steps=6,
                                                            reward_dir=tiny_reward_model_dir))
    # PPO writes the policy and the value model per checkpoint: its 3rd file is checkpoint-4's policy.
    first = "kill-in-save:3" if stage == "ppo" else "kill-in-save:2"
    code, _ = finish(start(stage, path, fault=first))
    assert code == -signal.SIGKILL
    half = out / ("tmp-checkpoint-4" if stage == "ppo" else "checkpoint-4")
    assert half.is_dir() and not (half / rundir.TRAINER_STATE_FILE).exists()
    code, _ = finish(start(stage, path, "train.resume=true", fault="kill-in-save:1"))
    assert code == -signal.SIGKILL
    code, err = finish(start(stage, path, "train.resume=true"))
    assert code == 0, err[-3000:]
    check_finished(out, straight, 6)
