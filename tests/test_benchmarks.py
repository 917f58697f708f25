"""benchmarks/compare.py's arithmetic on synthetic inputs: step-time parsing, medians and ratios, MFU, the table,
the LoRA memory check, and the child wrapper that reads peak CUDA memory. No training."""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import compare_report as report
import compare_runs as runs


def step_records(times: list[float], cpu: list[float], tokens_per_step: list[int]) -> list[dict]:
    seen, out = 0, []
    for step, (t, c, n) in enumerate(zip(times, cpu, tokens_per_step), 1):
        seen += n
        out.append({"step": step, "time": t, "cpu": c, "num_input_tokens_seen": seen})
    return out


def test_step_stats_leaves_out_the_first_step():
    # Steps end at t = 10, 12, 13, 15, 16: durations of steps 2..5 are 2, 1, 2, 1 (step 1's is unknown).
    records = step_records([10.0, 12.0, 13.0, 15.0, 16.0], [5.0, 6.0, 6.5, 7.5, 8.0], [999, 100, 200, 300, 400])
    stats = runs.step_stats(records)
    assert stats["step_times"] == [2.0, 1.0, 2.0, 1.0]
    assert stats["s_per_step"] == 1.5
    assert stats["cpu_s_per_step"] == 0.75  # median of 1.0, 0.5, 1.0, 0.5
    assert stats["tokens_per_s"] == pytest.approx((100 + 200 + 300 + 400) / 6.0)  # step 1's 999 tokens left out
    assert stats["tokens_per_step"] == 250
    assert stats["steps"] == 5


def test_step_stats_without_cpu_time_or_tokens_gives_none():
    # align's PPO loop: per-update records with wall clock only.
    stats = runs.step_stats([{"step": i, "time": t} for i, t in enumerate([0.0, 0.3, 0.4, 0.6, 1.5], 1)])
    assert stats["s_per_step"] == pytest.approx(0.25)
    assert stats["cpu_s_per_step"] is None and stats["tokens_per_s"] is None and stats["tokens_per_step"] is None


def test_step_stats_needs_three_steps():
    with pytest.raises(SystemExit, match="at least 3 steps"):
        runs.step_stats(step_records([1.0, 2.0], [1.0, 2.0], [10, 10]))


def test_flops_per_token_and_mfu():
    n = 1000
    assert report.flops_per_token(n, "sft", lora=False) == 6 * n
    assert report.flops_per_token(n, "sft", lora=True) == 4 * n  # no weight gradients for the frozen base
    assert report.flops_per_token(n, "dpo", lora=False) == 8 * n  # + the reference forward
    assert report.flops_per_token(n, "dpo", lora=True) == 6 * n
    assert report.matmul_parameters(100, 30, tied=False) == 70
    assert report.matmul_parameters(100, 30, tied=True) == 100
    # 5,000 tokens/s x 6e9 FLOPs/token on a 1e15 FLOP/s device: 3%.
    assert report.mfu(5000, 6e9, 1e15) == pytest.approx(0.03)
    assert report.mfu(None, 6e9, 1e15) is None and report.mfu(5000, 6e9, None) is None


def run(s_per_step, rss, tokens_per_s=100.0, cuda=None, wall=10.0, tokens_per_step=100.0, cpu=None):
    return {"s_per_step": s_per_step, "cpu_s_per_step": cpu if cpu is not None else s_per_step / 2,
            "tokens_per_s": tokens_per_s, "tokens_per_step": tokens_per_step, "peak_rss_mb": rss,
            "cuda_peak_mb": cuda, "wall_s": wall}


def test_table_shows_medians_and_ratios():
    jobs = [runs.Job("sft")]
    results = {"sft": {"trl": [run(2.0, 1000, 100), run(4.0, 1200, 50), run(3.0, 1100, 60)],
                       "align": [run(3.3, 1210, 70), run(3.0, 1000, 80, cpu=1.0), run(3.1, 1500, 90)]}}
    lines = report.table(jobs, results, gpu=False)
    assert lines[0] == ("| run | impl | s/step | CPU s/step | tokens/s | tokens/step | peak RSS MB | wall s | "
                        "s/step by round |")
    assert lines[2] == "| sft | trl | 3.000 | 1.500 | 60 | 100 | 1100 | 10.0 | 2.000, 4.000, 3.000 |"
    assert lines[3] == "| sft | align | 3.100 | 1.550 | 80 | 100 | 1210 | 10.0 | 3.300, 3.000, 3.100 |"
    # Medians of the per-round ratios: s/step 3.3/2, 3/4, 3.1/3; tokens/s 70/100, 80/50, 90/60; RSS 1210/1000,
    # 1000/1200, 1500/1100. (Ratios of the medians would give 1.333 tokens/s and 1.100 RSS.)
    assert lines[4] == "| sft | **align / trl** | **1.033** | 1.033 | 1.500 | 1.000 | 1.210 | 1.000 | |"
    assert report.verdicts(jobs, results, gpu=False) == [
        ("* sft: align / TRL seconds per step 1.033 wall clock, 1.033 CPU time (meets the <= 1.05 target on wall "
         "clock, meets it on CPU time)")]


def test_table_on_gpu_adds_cuda_memory_and_mfu_and_ppo_has_two_baselines():
    jobs = [runs.Job("ppo")]
    ppo = {"tokens_per_s": None, "tokens_per_step": None}
    results = {"ppo": {"trl": [run(0.5, 400, cuda=300.0, **ppo)], "trl-nogc": [run(0.2, 400, cuda=300.0, **ppo)],
                       "align": [run(0.25, 500, cuda=240.0, **ppo)]}}
    lines = report.table(jobs, results, gpu=True, mfus={("ppo", "align"): 0.4123})
    assert lines[0].endswith("| peak RSS MB | peak CUDA MB | wall s | MFU | s/step by round |")
    assert lines[4] == "| ppo | align | 0.250 | 0.125 | - | - | 500 | 240 | 10.0 | 41.2% | 0.250 |"
    assert lines[5] == "| ppo | **align / trl** | **0.500** | 0.500 | - | - | 1.250 | 0.800 | 1.000 |  | |"
    assert lines[6].startswith("| ppo | **align / trl-nogc** | **1.250** |")


def test_lora_memory_ratio_uses_rss_on_cpu_and_cuda_memory_on_gpu():
    results = {"sft-lora": {"trl": [run(1, 1000, cuda=100.0)], "align": [run(1, 1000, cuda=100.0)]},
               "dpo-lora": {"trl": [run(1, 1500, cuda=180.0)], "align": [run(1, 1100, cuda=110.0)]}}
    assert report.lora_memory(results, gpu=False) == {"trl": 1.5, "align": 1.1}
    assert report.lora_memory(results, gpu=True) == pytest.approx({"trl": 1.8, "align": 1.1})
    jobs = [runs.Job("sft", lora=True), runs.Job("dpo", lora=True)]
    assert report.verdicts(jobs, results, gpu=False)[-1] == (
        "* LoRA-DPO / LoRA-SFT peak memory, align: 1.100 (meets the <= 1.15 target); TRL: 1.500")


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_child_records_each_trainer_step_and_no_cuda_memory_on_cpu(tmp_path):
    # The hook wraps CallbackHandler.on_step_end, which every Trainer calls once per optimizer step.
    code = """
import json, sys
from types import SimpleNamespace
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, TrainerControl
json.dump(sys.argv, open(sys.argv[-1], "w"))
handler = CallbackHandler([TrainerCallback()], None, None, None, None)
for step in (1, 2, 3):
    handler.on_step_end(None, SimpleNamespace(global_step=step, num_input_tokens_seen=10 * step), TrainerControl())
"""
    argv = tmp_path / "argv.json"
    subprocess.run([sys.executable, str(BENCH / "compare_child.py"), str(tmp_path), "-c", code, "--x", str(argv)],
                   check=True)
    assert json.loads(argv.read_text()) == ["-c", "--x", str(argv)]
    records = runs.read_jsonl(tmp_path / "child_steps.jsonl")
    assert [(r["step"], r["num_input_tokens_seen"]) for r in records] == [(1, 10), (2, 20), (3, 30)]
    assert all(b["time"] >= a["time"] and b["cpu"] >= a["cpu"] for a, b in itertools.pairwise(records))
    assert json.loads((tmp_path / "child_stats.json").read_text()) == {"cuda_peak_mb": None}


def test_parameters_counts_the_checkpoint_on_the_meta_device(tiny_model_dir):
    import compare
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    total = sum(p.numel() for p in model.parameters())
    assert compare.parameters(str(tiny_model_dir)) == (total, total - model.get_input_embeddings().weight.numel())


@pytest.mark.parametrize(("shape", "millions"), [("smollm2-135m", 134.5), ("qwen2.5-0.5b", 494.0),
                                                 ("qwen2.5-1.5b", 1543.7)])
def test_gpu_benchmark_shapes_have_the_real_models_sizes(shape, millions):
    import bench_gpu
    import torch
    from tiny import build_tiny_tokenizer
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(bench_gpu.model_config(shape, build_tiny_tokenizer()))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_gpu_benchmark_stage_configs_are_valid_align_configs(tmp_path, stage):
    import bench_gpu
    import yaml

    from align import stages

    args = argparse.Namespace(steps=5, batch_size=8, seq_len=2048, liger=True, gradient_checkpointing=False)
    cfg = bench_gpu.stage_config(stage, tmp_path / "model", tmp_path / "data.jsonl", tmp_path / "out", args, "sdpa")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = stages.load(stage, path)
    assert loaded.train.max_length == (2048 if stage == "sft" else 1024)
    assert loaded.trainer_overrides == {"use_liger_kernel": True}
    assert getattr(loaded, "packing", False) is (stage == "sft")


def test_gpu_benchmark_table_gives_mfu_and_the_dpo_to_sft_ratio():
    import bench_gpu

    args = argparse.Namespace(shapes="qwen2.5-0.5b", stages="sft,dpo", steps=12, batch_size=8, seq_len=2048,
                              liger=False, gradient_checkpointing=False)
    rows = [{"shape": "qwen2.5-0.5b", "params": 494e6, "stage": stage, "s_per_step": 1.0, "tokens_per_s": tps,
             "mfu": mfu, "cuda_peak_mb": 1000.0} for stage, tps, mfu in (("sft", 1000.0, 0.41), ("dpo", 650.0, 0.35))]
    text = "\n".join(bench_gpu.render(rows, args, "sdpa", "NVIDIA H200", 7.9e14, "now"))
    assert "| qwen2.5-0.5b | 494.0M | sft | 1.000 | 1,000 | 41.0% | 1000 |" in text
    assert "| qwen2.5-0.5b | 0.65 |" in text and "790 TFLOP/s" in text and "NVIDIA H200" in text
