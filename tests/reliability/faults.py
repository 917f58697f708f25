"""Shared by the reliability tests: a small config of every stage on the tiny models, readers of a run dir, and an
in-process interruption at a given step.

Also runnable as a script (`python tests/reliability/faults.py <stage> <config.yaml> [overrides...]`): it runs
`align <stage>` with the fault named by the ALIGN_FAULT environment variable injected, for the kill tests that
need a separate process:
- `kill-in-save:N`: SIGKILL itself in the middle of writing the N-th checkpoint's weights (the file half written).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parents[1]
PROMPTS = TESTS.parent / "examples" / "data" / "prompts.jsonl"


def stage_config(tmp_path: Path, stage: str, model_dir: Path, out: Path, *, reward_dir: Path | None = None,
                 **train: Any) -> dict[str, Any]:
    """A plain dict config of `stage` on the tiny models: 4 steps (PPO: updates of 4 of the example prompts) of
    batches of 2, a checkpoint every 2, constant learning rate; `train` overrides the train section."""
    sys.path.insert(0, str(TESTS))
    from tiny import CONVERSATIONS, PAIRS, messages, write_pairs

    if stage in ("dpo", "reward", "kto", "orpo", "simpo"):
        data = write_pairs(tmp_path / f"{stage}-train.jsonl", PAIRS[:8])
    elif stage == "sft":
        data = tmp_path / "sft-train.jsonl"
        data.write_text("".join(json.dumps({"messages": messages(turns)}) + "\n" for turns in CONVERSATIONS))
    else:
        data = PROMPTS
    cfg: dict[str, Any] = {
        "stage": stage, "model": {"name_or_path": str(model_dir)}, "data": {"train": [str(data)]},
        "train": {"output_dir": str(out), "max_steps": 4, "batch_size": 2, "learning_rate": 1e-2, "max_length": 64,
                  "save_steps": 2, "save_total_limit": 3, "num_threads": 1, "lr_scheduler": "constant", **train},
        "tracking": {"backend": "none"}}
    if stage in ("grpo", "rloo"):  # 2 prompts x 2 completions a step, scored by an example rule
        cfg["rewards"] = [{"function": str(TESTS.parent / "examples" / "rewards.py") + ":concise"}]
        cfg.update(num_generations=2, max_completion_length=8)
        cfg["train"].update(max_length=160, batch_size=4)
    if stage == "ppo":
        cfg["reward_model"] = {"name_or_path": str(reward_dir), "probe": False}
        cfg["train"].update({"max_length": 160, "learning_rate": train.get("learning_rate", 1e-3)})
        del cfg["train"]["batch_size"]  # PPO's batches are the ppo section's
        cfg["ppo"] = {"rollout_batch_size": 4, "micro_batch": 2, "mini_batches": 2, "ppo_epochs": 1,
                      "response_length": 6}
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def logged_steps(out: Path) -> list[int]:
    """The step of every metrics.jsonl row that holds a training loss or a PPO score (one per logged step)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["step"] for row in rows if "loss" in row or "objective/scores" in row]


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def _inject(fault: str) -> None:
    kind, _, count = fault.partition(":")
    if kind == "kill-in-save":
        import safetensors.torch

        real, calls = safetensors.torch.save_file, []

        def save_file(tensors, filename, *args, **kwargs):
            calls.append(filename)
            if len(calls) == int(count):
                Path(filename).write_bytes(b"half a file")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(tensors, filename, *args, **kwargs)

        safetensors.torch.save_file = save_file
        import transformers.modeling_utils

        transformers.modeling_utils.safe_save_file = save_file
    elif fault:
        raise SystemExit(f"unknown ALIGN_FAULT {fault!r}")


def interrupt_at(monkeypatch, *steps: int) -> list[int]:
    """Interrupt the next run(s) in this process at each of `steps` (once each, in order): a KeyboardInterrupt raised
    while the health monitor reads that step's log, i.e. after the step was trained and logged, before any checkpoint
    of that step. Returns the steps still armed."""
    from align.observe import health

    armed = list(steps)
    real = health.HealthMonitor.update

    def update(self, step, metrics):
        if armed and step == armed[0] and ("loss" in metrics or "objective/scores" in metrics):
            armed.pop(0)
            raise KeyboardInterrupt
        return real(self, step, metrics)

    monkeypatch.setattr(health.HealthMonitor, "update", update)
    return armed


if __name__ == "__main__":
    _inject(os.environ.get("ALIGN_FAULT", ""))
    from align import cli

    sys.exit(cli.main([sys.argv[1], "--config", *sys.argv[2:]]))
