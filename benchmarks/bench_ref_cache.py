"""DPO epochs with a live reference model vs. reference log-probs precomputed and read from the cache.

(a) live: precompute_ref_log_probs=false; a frozen copy of the starting policy scores every batch.
(b) cached: precompute_ref_log_probs=true with a warm $ALIGN_CACHE_DIR/ref_logps entry, so the trainer reads the
    log-probs and never runs the reference. The entry is written once beforehand (a cache miss): that run's
    precompute time is the one-time cost.
Both train the same pairs for 3 epochs; runs alternate a, b, a, b, ... so load changes on a shared machine hit both.
Prints seconds per epoch for epochs 2-3 (epoch 1 is the same work but includes warm-up) and the ratio a/b, as wall
time and as this process's CPU time: with one torch thread, CPU time barely moves when other jobs share the cores.

The model is a random Llama (hidden 384, 4 layers) with the SmolLM2-135M-Instruct tokenizer and chat template, or
the real SmolLM2-135M-Instruct (--model smollm2-135m-instruct); it must already be pulled (`align models pull`).
Data: the first --pairs pairs of hh-rlhf helpful-base/test from ../shared/data. The cache goes to a temporary dir.

Run: .venv/bin/python benchmarks/bench_ref_cache.py [--model random] [--pairs 24] [--repeats 2] [--lora]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl"
ALIAS = "smollm2-135m-instruct"


def random_llama(out: Path, tokenizer_dir: Path) -> Path:
    """A random Llama with SmolLM2's tokenizer (49,152 tokens) and chat template, saved like a checkpoint."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def dpo_config(model: str, data: Path, out: Path, cached: bool, args):
    from align import config
    from align.stages.dpo import DPOConfig

    base = {"model": {"name_or_path": model}, "data": {"train": [str(data)]},
            "train": {"output_dir": str(out), "epochs": 3, "batch_size": args.batch_size,
                      "max_length": args.max_length,
                      "learning_rate": 1e-5, "lr_scheduler": "constant", "num_threads": args.threads,
                      "save_steps": 10**6, "logging_steps": 10**6},
            "precompute_ref_log_probs": cached}
    if args.lora:
        base["model"]["lora"] = {"enabled": True, "rank": 16}
    return config.load_config(DPOConfig, None, [], base=base)


def train(cfg) -> dict:
    """Build and train (no final save); returns per-epoch (wall, CPU) seconds, the precompute report and the loss."""
    from transformers import TrainerCallback

    from align.observe import progress, tracking
    from align.stages import dpo

    class EpochTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.started = [], (0.0, 0.0)

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.started = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, args, state, control, **kwargs):
            self.seconds.append((time.perf_counter() - self.started[0], time.process_time() - self.started[1]))

    started = time.perf_counter()
    built = dpo.build(cfg, tracking.Tracker(cfg.tracking, cfg.train.output_dir, stage="dpo", run_config={}))
    build_s = time.perf_counter() - started
    timer = EpochTimer()
    progress.install(built.trainer, "dpo")  # as `align dpo` runs it: a progress bar instead of printed logs
    built.trainer.add_callback(timer)
    result = built.trainer.train()
    return {"epochs": timer.seconds, "build_s": build_s, "loss": result.training_loss,
            "ref": built.summary.get("reference_log_probs", {}).get("train"), "steps": built.trainer.state.global_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random", help=f"random or {ALIAS}")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (reference: adapter disabled)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="(a, b) rounds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from align import models, registry

    if not registry.is_pulled(ALIAS):
        raise SystemExit(f"{ALIAS} is not pulled into {registry.cache_dir()}; run: align models pull {ALIAS}")
    alias_dir = registry.alias_path(ALIAS)
    with tempfile.TemporaryDirectory(prefix="bench-ref-cache-") as tmp_dir:
        tmp = Path(tmp_dir)
        # The model comes from the user's cache; the reference log-probs go to a fresh cache of this run.
        os.environ["ALIGN_CACHE_DIR"] = str(tmp / "cache")
        model = str(random_llama(tmp / "model", alias_dir) if args.model == "random" else alias_dir)
        models.configure_threads(args.threads)
        data = tmp / "pairs.jsonl"
        data.write_text("".join(HH.read_text(encoding="utf-8").splitlines(keepends=True)[:args.pairs]),
                        encoding="utf-8")

        warm = train(dpo_config(model, data, tmp / "warm", True, args))
        assert warm["ref"]["cache"] == "miss"
        runs: dict[str, list[dict]] = {"live": [], "cached": []}
        for i in range(args.repeats):
            for name in ("live", "cached"):
                run = train(dpo_config(model, data, tmp / f"{name}-{i}", name == "cached", args))
                assert name == "live" or run["ref"]["cache"] == "hit"
                runs[name].append(run)
                print(f"round {i + 1} {name:6s}: epochs (wall/CPU s) "
                      + "  ".join(f"{w:.1f}/{c:.1f}" for w, c in run["epochs"]) + f", loss {run['loss']:.5f}",
                      flush=True)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch threads={args.threads}; model {args.model}"
          f"{' + LoRA r16' if args.lora else ' (full fine-tuning)'}; {args.pairs} hh-rlhf pairs, batch "
          f"{args.batch_size}, max_length {args.max_length}, {runs['live'][0]['steps'] // 3} steps/epoch, "
          f"{args.repeats} interleaved rounds")
    print("| reference log-probs | wall s/epoch, epochs 2-3 (median) | CPU s/epoch, epochs 2-3 (median) |")
    print("|---|---|---|")
    medians = {}
    for name, label in (("live", "live reference model (a)"), ("cached", "precomputed, read from cache (b)")):
        later = [s for run in runs[name] for s in run["epochs"][1:]]
        medians[name] = [statistics.median(s[i] for s in later) for i in (0, 1)]
        print(f"| {label} | {medians[name][0]:.1f} | {medians[name][1]:.1f} |")
    wall, cpu = (medians["live"][i] / medians["cached"][i] for i in (0, 1))
    print(f"| speed-up a/b (target >= 1.3x) | {wall:.2f}x | {cpu:.2f}x |")
    print(f"\none-time precompute (cache miss, train split): {warm['ref']['seconds']:.1f} s wall "
          f"(= {warm['ref']['seconds'] / medians['cached'][0]:.2f} cached epochs); a cache hit: "
          f"{statistics.median(r['ref']['seconds'] for r in runs['cached']):.2f} s")


if __name__ == "__main__":
    main()
