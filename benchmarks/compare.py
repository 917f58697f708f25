"""Time align's stages against plain TRL scripts doing the same work, back to back, and print a table.

    python benchmarks/compare.py --stages sft,dpo --model smollm2-135m-instruct --steps 8

Each run is a child process of this one (benchmarks/measure.py records its peak RSS). Seconds per step are the
median gap between consecutive optimizer-step log lines, skipping the first step (warm-up); tokens/s is input
tokens (prompt and reply, padding included, as the trainers count them) over the same span.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = {"sft": REPO / "examples/data/sft_chat.jsonl", "dpo": REPO / "examples/data/preference.jsonl"}


def measure(cmd: list[str]) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/measure.py"), *cmd], capture_output=True, text=True)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    stats = json.loads(last)
    if stats.get("returncode") != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return stats


def step_stats(lines: list[dict]) -> dict:
    steps = [m for m in lines if "loss" in m and "time" in m]
    gaps = [b["time"] - a["time"] for a, b in zip(steps[1:], steps[2:])] or [0.0]
    tokens = steps[-1]["num_input_tokens_seen"] - steps[1]["num_input_tokens_seen"] if len(steps) > 2 else 0
    span = steps[-1]["time"] - steps[1]["time"] if len(steps) > 2 else 0
    return {"s_per_step": statistics.median(gaps), "tokens_per_s": tokens / span if span else 0.0,
            "steps": len(steps)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_align(stage: str, model: str, args, work: Path) -> dict:
    out = work / f"align-{stage}"
    cfg = {"stage": stage, "model": {"name_or_path": model, "lora": {"enabled": args.lora}},
           "data": {"train": [str(DATA[stage])]},
           "train": {"output_dir": str(out), "max_steps": args.steps, "batch_size": args.batch_size,
                     "max_length": args.max_length, "learning_rate": 1e-5, "lr_scheduler": "constant",
                     "save_steps": 10_000, "num_threads": args.threads, "logging_steps": 1}}
    path = work / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    stats = measure([sys.executable, "-m", "align.cli", "--log-level", "WARNING", stage, "--config", str(path)])
    return {**stats, **step_stats(read_jsonl(out / "metrics.jsonl"))}


def run_trl(stage: str, model: str, args, work: Path) -> dict:
    out = work / f"trl-{stage}"
    cmd = [sys.executable, str(REPO / "benchmarks/raw_trl.py"), stage, "--model", model, "--data", str(DATA[stage]),
           "--out", str(out), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--threads", str(args.threads)] + (["--lora"] if args.lora else [])
    stats = measure(cmd)
    return {**stats, **step_stats(read_jsonl(out / "steps.jsonl"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="sft,dpo")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--json-out", default=None, help="also write the rows as JSON")
    args = p.parse_args()

    sys.path.insert(0, str(REPO))
    from align import registry

    model = registry.resolve(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages.split(","):
            theirs = run_trl(stage, model, args, Path(tmp))
            ours = run_align(stage, model, args, Path(tmp))
            rows.append((stage, theirs, ours))

    import torch
    import transformers
    import trl

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, trl {trl.__version__}; model {args.model}, {args.steps} steps, batch "
          f"{args.batch_size}, max_length {args.max_length}, lora {args.lora}, threads {args.threads or 'auto'}")
    header = f"{'stage':6} {'impl':6} {'s/step':>8} {'tokens/s':>9} {'peak RSS MB':>12} {'wall s':>7}"
    print(header)
    print("-" * len(header))
    for stage, theirs, ours in rows:
        for name, r in (("trl", theirs), ("align", ours)):
            print(f"{stage:6} {name:6} {r['s_per_step']:8.3f} {r['tokens_per_s']:9.1f} {r['peak_rss_mb']:12.1f} "
                  f"{r['wall_s']:7.1f}")
        print(f"{stage:6} {'ratio':6} {ours['s_per_step'] / theirs['s_per_step']:8.3f} "
              f"{'':9} {ours['peak_rss_mb'] / theirs['peak_rss_mb']:12.3f}   (align / trl)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([{"stage": s, "trl": t, "align": o} for s, t, o in rows], indent=2))


if __name__ == "__main__":
    main()
