"""align against the libraries it wraps, on the same model, data and hyper-parameters, back to back.

    .venv/bin/python benchmarks/compare.py                      # the real default model; writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/compare.py --model tiny --steps 4 --ppo-steps 4 --rounds 1 --out /tmp/RESULTS.md

Runs SFT and DPO (and on request KTO, ORPO, SimPO, GRPO and RLOO), full and LoRA, through `align` and through a
plain TRL script (benchmarks/raw_trl.py), and PPO through `align` and TRL 1.12's PPOTrainer (its own venv;
benchmarks/ppo_parity.py's tiny setup, TRL's gc.collect() calls as shipped and patched out). Each run is a fresh
child process; the implementations alternate (A B, B A, ...) for --rounds rounds and the table shows medians:
seconds/step, tokens/s, peak memory (RSS on CPU; on a GPU also torch.cuda.max_memory_allocated and MFU against the
measured bf16 matmul peak) and the ratio align / theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import compare_report as report
import compare_runs as runs

REPO = Path(__file__).resolve().parents[1]
OUT_MD = REPO / "benchmarks" / "RESULTS.md"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="sft,dpo,ppo",
                   help="comma-separated: sft, dpo, kto, orpo, simpo, grpo, rloo, ppo")
    p.add_argument("--variants", default="full,lora", help="all but PPO: full fine-tuning, LoRA, or both")
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, checkpoint dir, or 'tiny' (random)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads in every run")
    p.add_argument("--rounds", type=int, default=2, help="runs of each implementation, alternating order")
    p.add_argument("--ppo-steps", type=int, default=10, help="PPO updates per run")
    p.add_argument("--trl-python", default="/tmp/venv-trl112/bin/python", help="python of a venv with trl 1.12")
    p.add_argument("--workdir", default=None, help="keep run inputs here (default: a temporary dir)")
    p.add_argument("--out", default=str(OUT_MD), help="where to write the markdown report")
    p.add_argument("--json-out", default=None, help="also write every run's measurements as JSON")
    p.add_argument("--note", default=None, help="a line for RESULTS.md's setup, e.g. what else the machine ran")
    return p.parse_args()


def resolve_model(name: str, work: Path) -> str:
    """A checkpoint dir for both sides: 'tiny' builds tests/tiny.py's random 2-layer Llama, an alias is pulled."""
    if name != "tiny":
        sys.path.insert(0, str(REPO))
        from align import models

        return models.resolve_path(name)
    import torch
    from transformers import LlamaForCausalLM

    sys.path.insert(0, str(REPO / "tests"))
    from tiny import build_tiny_tokenizer, llama_config

    out = work / "tiny-model"
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def parameters(model_dir: str) -> tuple[int, int]:
    """(all parameters, those in matrix multiplies) of the checkpoint, counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return total, report.matmul_parameters(total, model.get_input_embeddings().weight.numel(), tied)


def measured_peak_flops(size: int = 8192, repeats: int = 50) -> float:
    """The GPU's bf16 matmul throughput, measured: the denominator of MFU."""
    import torch

    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def main() -> int:
    args = parse_args()
    stages = args.stages.split(",")
    variants = [v == "lora" for v in args.variants.split(",")]
    jobs = [runs.Job(stage, lora) for stage in runs.TRAINER_STAGES if stage in stages for lora in variants]
    jobs += [runs.Job("ppo")] if "ppo" in stages else []
    if "ppo" in stages and not Path(args.trl_python).is_file():
        raise SystemExit(f"{args.trl_python} not found; create the TRL 1.12 venv (see benchmarks/ppo_parity.py)")
    import torch

    gpu = torch.cuda.is_available()
    load_start, started = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M %Z")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        settings = runs.Settings(model=resolve_model(args.model, work), steps=args.steps, batch_size=args.batch_size,
                                 max_length=args.max_length, threads=args.threads, ppo_steps=args.ppo_steps,
                                 trl_python=args.trl_python, work=work)
        if "ppo" in stages:
            runs.prepare_ppo(settings)
        results = {job.name: {impl: [] for impl in job.impls} for job in jobs}
        for r in range(args.rounds):
            for job in jobs:
                for impl in job.impls if r % 2 == 0 else reversed(job.impls):
                    result = runs.run(job, impl, settings, f"r{r + 1}")
                    results[job.name][impl].append(result)
                    print(f"round {r + 1} {job.name:9} {impl:8} {result['s_per_step']:.3f} s/step, peak RSS "
                          f"{result['peak_rss_mb']:.0f} MB, load {os.getloadavg()[0]:.2f}", flush=True)
        commands = {job.name: runs.commands(job, settings) for job in jobs}
        total, matmul = parameters(settings.model)
    load_end = os.getloadavg()

    mfus = {}
    if gpu:
        peak = measured_peak_flops()
        for job in jobs:
            per_token = report.flops_per_token(matmul, job.stage, job.lora)
            for impl in job.impls:
                mfus[job.name, impl] = report.mfu(report.median_of(results[job.name][impl], "tokens_per_s"),
                                                  per_token, peak)
    lines = report.table(jobs, results, gpu, mfus) + [""] + report.verdicts(jobs, results, gpu)
    print("\n".join(lines))
    context = {"started": started, "load": (load_start, load_end), "gpu": gpu, "parameters": (total, matmul),
               "command": shlex.join(["python", "benchmarks/compare.py", *sys.argv[1:]]), "commands": commands,
               "trl_python": args.trl_python, "args": vars(args), "has_ppo": "ppo" in stages}
    Path(args.out).write_text(report.render(lines, context))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
