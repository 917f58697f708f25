"""SFT and DPO throughput and MFU through `align` on model shapes of 135M, 0.5B and 1.5B parameters (random weights).

    python benchmarks/bench_gpu.py                                        # a GPU: every shape, benchmarks/GPU_RESULTS.md
    python benchmarks/bench_gpu.py --shapes tiny --steps 4 --seq-len 128 --batch-size 2 --out /tmp/gpu.md   # CPU smoke
    benchmarks/gpu_device.sh                                              # the same on the device machine (wheels)

For each shape: a random-weight checkpoint of that architecture (SmolLM2-135M's Llama, Qwen2.5-0.5B's and -1.5B's
Qwen2; vocabulary sizes included, so the output head costs what it costs there) with tests/tiny.py's tokenizer,
synthetic chat rows and preference pairs, then `align sft` (packed to --seq-len, bf16 through dtype: auto) and
`align dpo` (a live reference model, so the reference forward is timed) in fresh child processes, timed by
compare_child.py at every optimizer step (the first step left out). MFU is model FLOPs (6N per trained token, 8N
for DPO's policy + reference; attention scores left out, so it is a lower bound) over the measured bf16 matmul peak.
Targets (issue #7): MFU >= 40% at >= 0.5B parameters; DPO tokens/s >= 0.6x SFT's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import compare_report as report
import compare_runs as runs

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT_MD = BENCH / "GPU_RESULTS.md"
SHAPES = {
    "tiny": ("llama", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "vocab_size": 512}),
    "smollm2-135m": ("llama", {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                               "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                               "rope_theta": 100000.0}),
    "qwen2.5-0.5b": ("qwen2", {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                               "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                               "rope_theta": 1000000.0}),
    "qwen2.5-1.5b": ("qwen2", {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                               "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                               "rope_theta": 1000000.0}),
}
"""Architecture and config of each shape; all tie the output head to the input embedding, as the originals do."""
WORDS = ["the", "a", "model", "answer", "question", "data", "train", "token", "reply", "value", "policy", "reward",
         "human", "assistant", "good"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b", help=f"of {', '.join(SHAPES)}")
    p.add_argument("--stages", default="sft,dpo")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per run (the first is not timed)")
    p.add_argument("--batch-size", type=int, default=8, help="packed SFT rows / DPO pairs per step")
    p.add_argument("--seq-len", type=int, default=2048, help="SFT packing length; DPO pairs use half of it")
    p.add_argument("--attn", default=None, help="attn_implementation (default: flash_attention_2 if installed, "
                                                "else sdpa with align's block-diagonal packing mask)")
    p.add_argument("--liger", action="store_true", help="TRL's use_liger_kernel (needs liger-kernel installed)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--workdir", default=None, help="keep checkpoints and data here (default: a temporary dir)")
    p.add_argument("--out", default=str(OUT_MD))
    return p.parse_args()


def model_config(shape: str, tokenizer):
    """The transformers config of `shape`, with the tokenizer's special token ids."""
    from transformers import LlamaConfig, Qwen2Config

    arch, fields = SHAPES[shape]
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    return (LlamaConfig if arch == "llama" else Qwen2Config)(**fields, **ids, tie_word_embeddings=True,
                                                             max_position_embeddings=32768)


def build_checkpoint(shape: str, out: Path) -> Path:
    """A random-weight checkpoint of `shape`, saved in bf16 with the tiny test tokenizer (its ids fit any vocab)."""
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "tests"))
    from tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(model_config(shape, tokenizer), dtype=torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def write_data(work: Path, rows: int, seq_len: int) -> dict[str, Path]:
    """Synthetic chat rows (mixed lengths, so packing has something to do) and preference pairs within seq_len/2."""
    rng = random.Random(0)
    paths = {"sft": work / "sft.jsonl", "dpo": work / "pairs.jsonl"}
    with paths["sft"].open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"messages": [{"role": "user", "content": text(rng, rng.randint(8, 64))},
                                             {"role": "assistant",
                                              "content": text(rng, rng.randint(32, seq_len // 3))}]}) + "\n")
    with paths["dpo"].open("w") as f:
        for _ in range(rows):
            prompt = [{"role": "user", "content": text(rng, rng.randint(8, 64))}]
            f.write(json.dumps({"prompt": prompt, **{
                side: [{"role": "assistant", "content": text(rng, rng.randint(16, seq_len // 4))}]
                for side in ("chosen", "rejected")}}) + "\n")
    return paths


def stage_config(stage: str, model: Path, data: Path, out: Path, args: argparse.Namespace, attn: str) -> dict:
    sft = stage == "sft"
    cfg = {"stage": stage,
           "model": {"name_or_path": str(model), "attn_implementation": attn,
                     "gradient_checkpointing": args.gradient_checkpointing},
           "data": {"train": [str(data)]},
           "train": {"output_dir": str(out), "max_steps": args.steps, "batch_size": args.batch_size,
                     "max_length": args.seq_len if sft else args.seq_len // 2, "learning_rate": 1e-5,
                     "lr_scheduler": "constant", "save_steps": 100_000, "logging_steps": 1},
           "tracking": {"backend": "none"}}
    if sft:
        cfg["packing"] = True
    if args.liger:
        cfg["trainer_overrides"] = {"use_liger_kernel": True}
    return cfg


def default_attention() -> str:
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def main() -> int:
    args = parse_args()
    shapes, stages = args.shapes.split(","), args.stages.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    import torch
    from compare import measured_peak_flops, parameters

    gpu = torch.cuda.is_available()
    attn = args.attn or default_attention()
    peak = measured_peak_flops() if gpu else None
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        # Enough rows for every step of every run, with room to spare after packing.
        data = write_data(work, rows=max(64, 2 * args.steps * args.batch_size * 4), seq_len=args.seq_len)
        for shape in shapes:
            model = build_checkpoint(shape, work / f"model-{shape}")
            total, matmul = parameters(str(model))
            for stage in stages:
                out = work / f"{shape}-{stage}"
                cfg_path = runs.write_config(stage_config(stage, model, data[stage], out, args, attn), out)
                stats = runs.measure(sys.executable, ["-m", "align.cli", "--log-level", "WARNING", stage,
                                                      "--config", str(cfg_path)], out, cwd=REPO)
                shutil.rmtree(out, ignore_errors=True)  # a saved 1.5B model is 3 GB; only the timings are kept
                timing = runs.step_stats(stats.pop("steps"))
                tps = timing["tokens_per_s"]
                mfu = report.mfu(tps, report.flops_per_token(matmul, stage, False), peak)
                rows.append({"shape": shape, "params": total, "stage": stage, **timing, "mfu": mfu,
                             "cuda_peak_mb": stats.get("cuda_peak_mb"), "peak_rss_mb": stats.get("peak_rss_mb")})
                print(f"{shape:13} {stage}: {timing['s_per_step']:.3f} s/step, {tps or 0:,.0f} tokens/s, MFU "
                      + (f"{mfu:.1%}" if mfu is not None else "not measured"), flush=True)
    device = torch.cuda.get_device_name() if gpu else "CPU (no GPU: MFU not measured)"
    lines = render(rows, args, attn, device, peak, started)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def render(rows: list[dict], args: argparse.Namespace, attn: str, device: str, peak: float | None,
           started: str) -> list[str]:
    import torch
    import transformers
    import trl

    command = (f"--shapes {args.shapes} --stages {args.stages} --steps {args.steps} --batch-size {args.batch_size} "
               f"--seq-len {args.seq_len}" + " --liger" * args.liger
               + " --gradient-checkpointing" * args.gradient_checkpointing)
    lines = ["# SFT and DPO throughput and MFU by model shape", "",
             (f"- {started}, {device}; torch {torch.__version__}, transformers {transformers.__version__}, "
              f"trl {trl.__version__}"),
             f"- measured bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s" if peak else "- bf16 peak: not measured",
             f"- `python benchmarks/bench_gpu.py {command}`",
             f"- attention: {attn}; SFT packed to {args.seq_len} tokens per row, DPO pairs up to {args.seq_len // 2}",
             "", "| shape | parameters | stage | s/step | tokens/s | MFU | peak CUDA MB |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "–"
        cuda = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] else "–"
        lines.append(f"| {r['shape']} | {r['params'] / 1e6:.1f}M | {r['stage']} | {r['s_per_step']:.3f} | "
                     f"{r['tokens_per_s'] or 0:,.0f} | {mfu} | {cuda} |")
    lines += ["", "| shape | DPO tokens/s / SFT tokens/s (target >= 0.6) |", "|---|---:|"]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        by_stage = {r["stage"]: r["tokens_per_s"] for r in rows if r["shape"] == shape}
        if by_stage.get("sft") and by_stage.get("dpo"):
            lines.append(f"| {shape} | {by_stage['dpo'] / by_stage['sft']:.2f} |")
    lines += ["", ("MFU counts 6N FLOPs per SFT token and 8N per DPO token (policy forward and backward plus the "
                   "reference forward), N the parameters in matrix multiplies; attention scores are left out.")]
    return lines


if __name__ == "__main__":
    sys.exit(main())
