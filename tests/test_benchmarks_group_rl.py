"""benchmarks/compare_runs.py's GRPO and RLOO jobs: the align side is a valid stage config with the settings the
plain TRL script (benchmarks/raw_trl.py) uses by default. No training."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import compare_runs as runs


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_the_align_side_loads_with_raw_trls_settings(tmp_path, monkeypatch, stage):
    from align import stages

    monkeypatch.chdir(REPO)  # the reward rule is named relative to the repository, as compare.py runs it
    settings = runs.Settings(model="m", steps=6, batch_size=4, max_length=256, threads=1, ppo_steps=0,
                             trl_python="", work=tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(runs.align_config(runs.Job(stage), settings, tmp_path / "out")))
    cfg = stages.load(stage, path)
    assert [r.function for r in cfg.rewards] == ["examples/rewards.py:concise"]
    assert (cfg.num_generations, cfg.max_completion_length, cfg.temperature, cfg.beta) == (2, 32, 1.0, 0.04)
    assert str(runs.DATA[stage]).endswith("examples/data/prompts.jsonl")
    trl = runs.trl_args(runs.Job(stage), settings, tmp_path / "out")
    given = dict(zip(trl[::2], trl[1::2], strict=True))  # (script, stage), then (option, value) pairs
    assert given[str(REPO / "benchmarks" / "raw_trl.py")] == stage
    assert (int(given["--num-generations"]), int(given["--max-completion-length"]), float(given["--beta"])) == (
        cfg.num_generations, cfg.max_completion_length, cfg.beta)
