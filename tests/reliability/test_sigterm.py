"""SIGTERM (what schedulers and `docker stop` send) saves a checkpoint at the next step boundary and exits 143 with one
`error:` line naming it; the run resumes from that checkpoint to where a run without the signal ends. And a W&B key
on a machine that cannot reach W&B logs offline after one warning, without waiting for wandb's own timeout."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from faults import logged_steps, stage_config, summary, write_config
from safetensors.torch import load_file

from align import cli, rundir
from align.observe import health, tracking
from align.sections import TrackingConfig


def sigterm_at(monkeypatch, step: int) -> None:
    """Send this process SIGTERM while the health monitor reads step `step`'s log (after the step)."""
    real = health.HealthMonitor.update

    def update(self, at, metrics):
        if at == step and ("loss" in metrics or "objective/scores" in metrics):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, at, metrics)

    monkeypatch.setattr(health.HealthMonitor, "update", update)


def stopped(capsys, argv) -> str:
    assert cli.main(argv) == 143
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("stage", ["sft", pytest.param("ppo", marks=pytest.mark.slow)])
def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path, tiny_model_dir, tiny_reward_model_dir, capsys,
                                                        monkeypatch, stage):
    straight, out = tmp_path / "straight", tmp_path / "out"
    for run in (straight, out):
        write_config(tmp_path / f"{run.name}.yaml", stage_config(tmp_path, stage, tiny_model_dir, run, max_steps=4,
                                                                 save_steps=10, reward_dir=tiny_reward_model_dir))
    assert cli.main([stage, "--config", str(tmp_path / "straight.yaml")]) == 0
    previous = signal.getsignal(signal.SIGTERM)
    sigterm_at(monkeypatch, 2)
    # The trainer's step 2 log comes after its step-end check, so SFT stops after step 3; PPO checks after the update.
    at = 3 if stage == "sft" else 2
    line = stopped(capsys, [stage, "--config", str(tmp_path / "out.yaml")])
    assert line == (f"error: stopped by SIGTERM after {'step' if stage == 'sft' else 'update'} {at}; "
                    f"{out / f'checkpoint-{at}'} holds it. To continue, rerun a stage command with "
                    "train.resume=true, an align pipeline command as it was")
    assert rundir.checkpoints(out) == ([out / f"checkpoint-{at}"], [])
    assert not (out / rundir.SUMMARY).exists() and not (out / rundir.LOCK_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) is previous, "the handler is the run's only"

    monkeypatch.undo()
    assert cli.main([stage, "--config", str(tmp_path / "out.yaml"), "train.resume=true"]) == 0
    assert summary(out)["metrics"]["steps"] == 4 and logged_steps(out) == [1, 2, 3, 4]
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_real_sigterm_to_the_cli(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    path = write_config(tmp_path / "sft.yaml", stage_config(tmp_path, "sft", tiny_model_dir, out, max_steps=2000,
                                                            save_steps=1000, learning_rate=1e-4))
    proc = subprocess.Popen([sys.executable, "-m", "align.cli", "sft", "--config", str(path)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() or not logged_steps(out):
        assert proc.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM after step ")
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert rundir.checkpoints(out) == ([out / f"checkpoint-{step}"], [])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_network(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")


def test_a_wandb_key_without_network_starts_wandb_offline_after_one_warning(tmp_path, monkeypatch, caplog):
    import wandb

    no_network(monkeypatch)
    modes = []

    def init(**kwargs):  # the start only: the real offline run is the slow test below
        modes.append(kwargs["mode"])
        raise KeyboardInterrupt

    monkeypatch.setattr(wandb, "init", init)
    with caplog.at_level(logging.WARNING, logger="align"), pytest.raises(KeyboardInterrupt):
        tracking.Tracker(TrackingConfig(backend="wandb", project="p"), tmp_path / "out", stage="sft", run_config={})
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert modes == ["offline"]
    assert len(warnings) == 1 and "cannot be reached; logging offline instead" in warnings[0]


def test_an_online_wandb_start_that_fails_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    """Reached, but refused (a bad key, a proxy): one warning, then the offline start."""
    import wandb

    no_network(monkeypatch)
    monkeypatch.setattr(tracking, "reachable", lambda url: True)
    modes = []

    def init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("the server said no\nmore detail")
        raise KeyboardInterrupt  # the offline start itself is the slow test below

    monkeypatch.setattr(wandb, "init", init)
    with caplog.at_level(logging.WARNING, logger="align"), pytest.raises(KeyboardInterrupt):
        tracking.Tracker(TrackingConfig(backend="wandb", project="p"), tmp_path / "out", stage="sft", run_config={})
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert modes == ["online", "offline"]
    assert warnings == [("W&B: starting the online run failed (the server said no); logging offline instead "
                         "(upload later with `wandb sync`)")]


@pytest.mark.slow
def test_a_wandb_key_without_network_logs_offline(tmp_path, monkeypatch, caplog):
    no_network(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="align"):
        tracker = tracking.Tracker(TrackingConfig(backend="wandb", project="p"), tmp_path / "out", stage="sft",
                                   run_config={})
        tracker.log({"loss": 1.0}, step=1)
        notes = tracker.finish()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot be reached; logging offline instead" in warnings[0]
    assert notes["wandb_sync"].startswith("wandb sync ")


def test_reachable_is_a_tcp_connection():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert tracking.reachable(f"http://127.0.0.1:{server.getsockname()[1]}")
    assert not tracking.reachable(f"http://127.0.0.1:{closed_port()}")
