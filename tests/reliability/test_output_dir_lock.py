"""Two runs on one output dir: the second is refused (exit 2, naming the first's pid) while the first is alive; a lock
left by a process that is gone is taken over; the lock is released after a normal run, a failing one and Ctrl-C."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from tiny import CONVERSATIONS, messages

from align import cli, rundir
from align.errors import AlignError
from align.stages import lifecycle


@pytest.fixture
def sft_command(tmp_path, tiny_model_dir):
    """`align sft` arguments for one step on the tiny model into tmp_path/out."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in CONVERSATIONS))
    path = tmp_path / "sft.yaml"
    path.write_text(json.dumps({  # JSON is YAML
        "model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(data)]},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 2, "max_length": 64,
                  "num_threads": 1},
        "tracking": {"backend": "none"}}))
    return ["sft", "--config", str(path)]


def write_lock(out, pid: int, host: str | None = None):
    out.mkdir(parents=True, exist_ok=True)
    path = out / rundir.LOCK_FILE
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                "started_at": "2024-01-01T00:00:00"}))
    return path


def test_a_live_lock_refuses_the_second_run(tmp_path, sft_command, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = write_lock(tmp_path / "out", other.pid)
        assert cli.main(sft_command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and f"pid {other.pid}" in err and "Traceback" not in err
        assert json.loads(lock.read_text())["pid"] == other.pid, "the other run's lock is left alone"
        assert not (tmp_path / "out" / rundir.CONFIG_FILE).exists(), "nothing written into the other run's dir"
    finally:
        other.kill()
        other.wait()


def test_a_lock_on_another_host_is_not_taken_over(tmp_path):
    write_lock(tmp_path / "out", 1, host="elsewhere")
    with pytest.raises(AlignError, match="pid 1 on elsewhere"), rundir.run_lock(tmp_path / "out"):
        pass


def test_a_stale_lock_is_taken_over_and_released_after_the_run(tmp_path, sft_command, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_lock(tmp_path / "out", gone.pid)
    assert cli.main(sft_command) == 0
    assert f"pid {gone.pid}" in caplog.text, "the takeover is logged"
    assert not (tmp_path / "out" / rundir.LOCK_FILE).exists()


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_the_lock_is_held_during_the_run_and_released_when_it_fails(tmp_path, sft_command, monkeypatch, failure):
    out = tmp_path / "out"
    seen = []

    def fail(cfg, stage, train):
        def train_and_fail(run):
            seen.append(json.loads((out / rundir.LOCK_FILE).read_text()))
            raise failure
        return real(cfg, stage, train_and_fail)

    real = lifecycle.run_stage
    monkeypatch.setattr(lifecycle, "run_stage", fail)
    if isinstance(failure, KeyboardInterrupt):
        assert cli.main(sft_command) == 130
    else:
        with pytest.raises(RuntimeError, match="boom"):
            cli.main(sft_command)
    assert seen and seen[0]["pid"] == os.getpid()
    assert not (out / rundir.LOCK_FILE).exists()


def test_an_output_dir_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "out").write_text("not a dir")
    with pytest.raises(AlignError, match="is a file, not a directory"), rundir.run_lock(tmp_path / "out"):
        pass
