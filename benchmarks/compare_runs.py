"""One timed run per call, each in a fresh child process, for compare.py.

SFT, DPO, KTO, ORPO, SimPO, GRPO and RLOO (full or LoRA): `align <stage> --config` against benchmarks/raw_trl.py. PPO: `align ppo` against TRL
1.12's PPOTrainer (in its own venv) on benchmarks/ppo_parity.py's setup, with TRL's gc.collect() calls as shipped
and patched out. Every run goes through measure.py (peak RSS, from wait4) and compare_child.py (peak CUDA memory).

Timing: compare_child.py records every optimizer step of a transformers Trainer (wall clock, process CPU time,
input tokens seen) the same way on both sides; align's PPO loop, not a Trainer, is timed from its metrics.jsonl.
Seconds per step are the median gap between consecutive records, so the first step (warm-up, first allocations)
is never counted; tokens/s is input tokens over the same span, padding included, as the trainers count them (a DPO
step counts chosen and rejected).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ppo_parity
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PAIRS = REPO / "examples/data/preference.jsonl"
PROMPTS = REPO / "examples/data/prompts.jsonl"
DATA = {"sft": REPO / "examples/data/sft_chat.jsonl", "dpo": PAIRS, "kto": PAIRS, "orpo": PAIRS, "simpo": PAIRS,
        "grpo": PROMPTS, "rloo": PROMPTS}
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
TRAINER_STAGES = ("sft", "dpo", "kto", "orpo", "simpo", "grpo", "rloo")
"""The stages on a TRL trainer, timed against benchmarks/raw_trl.py."""
PPO_LR, PPO_KL = 3e-6, "k1"  # ppo_parity.py's speed setup


@dataclass(frozen=True)
class Job:
    stage: str
    """sft, dpo, kto, orpo, simpo, grpo, rloo or ppo."""
    lora: bool = False

    @property
    def name(self) -> str:
        return self.stage + ("-lora" if self.lora else "")

    @property
    def impls(self) -> tuple[str, ...]:
        return ("trl", "trl-nogc", "align") if self.stage == "ppo" else ("trl", "align")


@dataclass
class Settings:
    model: str
    """A checkpoint directory, read by both sides."""
    steps: int
    batch_size: int
    max_length: int
    threads: int
    ppo_steps: int
    trl_python: str
    work: Path


def step_stats(records: list[dict]) -> dict:
    """Seconds per step (median; wall clock and, where recorded, process CPU time), tokens/s and tokens/step from
    one record per step (`time`, optional `cpu` and `num_input_tokens_seen`), leaving out the first step's own
    duration."""
    if len(records) < 3:
        raise SystemExit(f"need at least 3 steps to time a run, got {len(records)}; raise --steps / --ppo-steps")
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(records)]
    cpu = [b["cpu"] - a["cpu"] for a, b in itertools.pairwise(records)] if "cpu" in records[0] else None
    faults = ([b["minor_faults"] - a["minor_faults"] for a, b in itertools.pairwise(records)]
              if "minor_faults" in records[0] else None)
    tokens = records[-1].get("num_input_tokens_seen", 0) - records[0].get("num_input_tokens_seen", 0)
    span = records[-1]["time"] - records[0]["time"]
    return {"s_per_step": statistics.median(gaps), "cpu_s_per_step": statistics.median(cpu) if cpu else None,
            "tokens_per_s": tokens / span if tokens and span > 0 else None,
            "tokens_per_step": tokens / len(gaps) if tokens else None, "steps": len(records), "step_times": gaps,
            "cpu_step_times": cpu, "minor_faults_per_step": statistics.median(faults) if faults else None}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(python: str, target: list[str], out: Path, cwd: Path | None = None) -> dict:
    """Run `python compare_child.py OUT target...` under measure.py: wall time, peak RSS, peak CUDA memory, and
    the child's per-step records (`steps`)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(BENCH / "measure.py"), python, str(BENCH / "compare_child.py"), str(out), *target]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, **ENV}, cwd=cwd)
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"returncode": proc.returncode}
    if result.get("returncode") != 0:
        raise SystemExit(f"failed: {shlex.join(target)}\n{proc.stderr[-4000:]}")
    steps = out / "child_steps.jsonl"
    return {**result, **json.loads((out / "child_stats.json").read_text()),
            "steps": read_jsonl(steps) if steps.is_file() else []}


def align_config(job: Job, s: Settings, out: Path) -> dict:
    return {"stage": job.stage, "model": {"name_or_path": s.model, "lora": {"enabled": job.lora}},
            "data": {"train": [str(DATA[job.stage])]},
            "train": {"output_dir": str(out), "max_steps": s.steps, "batch_size": s.batch_size,
                      "max_length": s.max_length, "learning_rate": 1e-5, "lr_scheduler": "constant",
                      "save_steps": 10_000, "num_threads": s.threads, "logging_steps": 1},
            **(GROUP_RL if job.stage in ("grpo", "rloo") else {})}


GROUP_RL = {"rewards": [{"function": "examples/rewards.py:concise"}], "num_generations": 2,
            "max_completion_length": 32, "temperature": 1.0, "beta": 0.04}
"""GRPO / RLOO settings of both sides (raw_trl.py gets them as options; its rule is the same concise): batch_size
completions per step, 2 per prompt."""


def trl_args(job: Job, s: Settings, out: Path) -> list[str]:
    return [str(BENCH / "raw_trl.py"), job.stage, "--model", s.model, "--data", str(DATA[job.stage]),
            "--out", str(out), "--steps", str(s.steps), "--batch-size", str(s.batch_size),
            "--max-length", str(s.max_length), "--threads", str(s.threads)] + (["--lora"] if job.lora else []) + (
            ["--num-generations", str(GROUP_RL["num_generations"]), "--max-completion-length",
             str(GROUP_RL["max_completion_length"]), "--beta", str(GROUP_RL["beta"])]
            if job.stage in ("grpo", "rloo") else [])


def ppo_trl_args(s: Settings, out: Path, gc: bool, steps: int, save_init: Path | None = None) -> list[str]:
    """ppo_parity's TRL 1.12 reference run: numpy seeded, gc.collect() as shipped or a no-op."""
    return ["-c", ppo_parity.TRL_REFERENCE, str(ppo_parity.NUMPY_SEED), "gc" if gc else "no-gc",
            str(ppo_parity.REFERENCE), "--steps", str(steps), "--threads", str(s.threads),
            "--output-dir", str(out / "trl_out"), "--metrics-out", str(out / "trl.json")] + (
            ["--save-init", str(save_init)] if save_init else [])


def ppo_config(s: Settings, out: Path) -> dict:
    cfg = ppo_parity.parity_config(s.work / "ppo-inputs", s.ppo_steps, PPO_LR, PPO_KL)
    cfg["train"].update(output_dir=str(out), num_threads=s.threads)
    return cfg


def prepare_ppo(s: Settings) -> None:
    """Dump the reference script's tokenizer, models and prompts (one untimed update) and lay them out for align."""
    dump = s.work / "ppo-dump"
    measure(s.trl_python, ppo_trl_args(s, s.work / "ppo-prepare", gc=True, steps=1, save_init=dump),
            s.work / "ppo-prepare", cwd=Path(tempfile.gettempdir()))
    ppo_parity.stage_inputs(dump, s.work / "ppo-inputs")


def write_config(cfg: dict, out: Path) -> Path:
    path = out.with_name(out.name + ".yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def commands(job: Job, s: Settings) -> dict[str, str]:
    """What each side runs, for RESULTS.md (paths under the work dir shown as <work>)."""
    out = s.work / f"{job.name}-IMPL"
    if job.stage == "ppo":
        cfg, trl = ppo_config(s, out), ppo_trl_args(s, out, gc=True, steps=s.ppo_steps)
        trl = [s.trl_python, "-c", "<ppo_parity.TRL_REFERENCE>", *trl[2:]]
    else:
        cfg, trl = align_config(job, s, out), [sys.executable, *trl_args(job, s, out)]
    text = {"align": f"align {job.stage} --config <config.yaml>", "config": yaml.safe_dump(cfg, sort_keys=False),
            "trl": shlex.join(trl)}
    return {k: v.replace(str(s.work), "<work>").replace(str(REPO) + "/", "") for k, v in text.items()}


def run(job: Job, impl: str, s: Settings, tag: str) -> dict:
    """One run of `impl` (trl, trl-nogc or align) on `job`; its output dir is removed afterwards (each run saves a
    model, and several hundred MB per run add up)."""
    out = s.work / f"{job.name}-{impl}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    align = ["-m", "align.cli", "--log-level", "WARNING", job.stage, "--config"]
    if job.stage == "ppo" and impl == "align":
        stats = measure(sys.executable, [*align, str(write_config(ppo_config(s, out), out))], out, cwd=REPO)
        # Our PPO loop is not a transformers Trainer: time it from its own per-update records.
        stats["steps"] = [r for r in read_jsonl(out / "metrics.jsonl") if "timing/update" in r]
    elif job.stage == "ppo":
        stats = measure(s.trl_python, ppo_trl_args(s, out, gc=impl == "trl", steps=s.ppo_steps), out,
                        cwd=Path(tempfile.gettempdir()))
    elif impl == "align":
        stats = measure(sys.executable, [*align, str(write_config(align_config(job, s, out), out))], out, cwd=REPO)
    else:
        stats = measure(sys.executable, trl_args(job, s, out), out, cwd=REPO)
    timing = step_stats(stats.pop("steps"))
    shutil.rmtree(out, ignore_errors=True)
    return {**stats, **timing}
