"""Medians, ratios, MFU and the markdown tables that compare.py prints and writes to benchmarks/RESULTS.md."""

from __future__ import annotations

import statistics
import sys

PEAK_MEMORY = {False: "peak_rss_mb", True: "cuda_peak_mb"}
"""Which peak memory the ratios and the LoRA check use: RSS on CPU, torch.cuda.max_memory_allocated on a GPU."""


def median_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None


def paired_ratio(ours: list[dict], theirs: list[dict], key: str) -> float | None:
    """Median over rounds of ours / theirs within the same round. The two ran back to back, so a round's ratio
    cancels the machine's load at that time, which a ratio of medians taken over different rounds would not."""
    ratios = [r for r in (ratio(a.get(key), b.get(key)) for a, b in zip(ours, theirs, strict=True)) if r is not None]
    return statistics.median(ratios) if ratios else None


def matmul_parameters(total: int, embedding: int, tied: bool) -> int:
    """Parameters used in matrix multiplies: the input embedding is a lookup, unless it is tied to the output head."""
    return total if tied else total - embedding


def flops_per_token(matmul_params: int, stage: str, lora: bool) -> float:
    """Model FLOPs per input token of a training step: forward 2N, backward 4N (activation gradients 2N, weight
    gradients 2N, which LoRA skips for its frozen base), plus 2N for DPO's reference forward on the same tokens and
    6N for KTO's (the reference on its rows, and policy and reference on as many mismatched rows for the KL term).
    Attention scores and the adapters' own matmuls are left out (small at these lengths and ranks)."""
    n = matmul_params
    return 2 * n + (2 * n if lora else 4 * n) + {"dpo": 2 * n, "kto": 6 * n}.get(stage, 0)


def mfu(tokens_per_s: float | None, per_token: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilization: achieved model FLOP/s over the device's measured peak."""
    if not tokens_per_s or not peak_flops:
        return None
    return tokens_per_s * per_token / peak_flops


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# (key in a run's measurements, column title, format); the table shows each as a median over rounds.
COLUMNS = [("s_per_step", "s/step", ".3f"), ("cpu_s_per_step", "CPU s/step", ".3f"), ("tokens_per_s", "tokens/s", ".0f"),
           ("tokens_per_step", "tokens/step", ".0f"), ("peak_rss_mb", "peak RSS MB", ".0f")]
GPU_COLUMNS = [("cuda_peak_mb", "peak CUDA MB", ".0f")]


def table(jobs, results: dict, gpu: bool, mfus: dict | None = None) -> list[str]:
    """Markdown rows: one per job and implementation (medians over rounds), then `align / <baseline>` (medians of
    the per-round ratios).

    `results[job.name][impl]` is the list of that pair's runs; `mfus[(job.name, impl)]` its MFU (GPU only)."""
    columns = COLUMNS + (GPU_COLUMNS if gpu else []) + [("wall_s", "wall s", ".1f")]
    titles = [title for _, title, _ in columns] + (["MFU"] if gpu else [])
    lines = ["| run | impl | " + " | ".join(titles) + " | s/step by round |",
             "|---|---|" + "---:|" * len(titles) + "---|"]
    for job in jobs:
        medians = {impl: {key: median_of(results[job.name][impl], key) for key, _, _ in columns} for impl in job.impls}
        for impl in job.impls:
            cells = [_cell(medians[impl][key], spec) for key, _, spec in columns]
            cells += [_cell((mfus or {}).get((job.name, impl)), ".1%")] if gpu else []
            rounds = ", ".join(f"{run['s_per_step']:.3f}" for run in results[job.name][impl])
            lines.append(f"| {job.name} | {impl} | " + " | ".join(cells) + f" | {rounds} |")
        for baseline in (impl for impl in job.impls if impl != "align"):
            ours, theirs = results[job.name]["align"], results[job.name][baseline]
            cells = [_cell(paired_ratio(ours, theirs, key), ".3f") for key, _, _ in columns]
            cells[0] = f"**{cells[0]}**"
            cells += [""] if gpu else []
            lines.append(f"| {job.name} | **align / {baseline}** | " + " | ".join(cells) + " | |")
    return lines


def lora_memory(results: dict, gpu: bool) -> dict[str, float | None]:
    """LoRA-DPO peak memory over LoRA-SFT peak memory, per implementation (issue target for align: <= 1.15)."""
    key = PEAK_MEMORY[gpu]
    if "sft-lora" not in results or "dpo-lora" not in results:
        return {}
    return {impl: paired_ratio(results["dpo-lora"][impl], results["sft-lora"][impl], key) for impl in results["dpo-lora"]}


def verdicts(jobs, results: dict, gpu: bool) -> list[str]:
    """One line per issue target this run measured: met or missed, with the numbers."""
    lines = []
    for job in (j for j in jobs if j.stage != "ppo"):
        ours, theirs = results[job.name]["align"], results[job.name]["trl"]
        wall, cpu = paired_ratio(ours, theirs, "s_per_step"), paired_ratio(ours, theirs, "cpu_s_per_step")
        lines.append(f"* {job.name}: align / TRL seconds per step {_cell(wall, '.3f')} wall clock, {_cell(cpu, '.3f')} "
                     f"CPU time ({'meets' if wall is not None and wall <= 1.05 else 'misses'} the <= 1.05 target on "
                     f"wall clock, {'meets' if cpu is not None and cpu <= 1.05 else 'misses'} it on CPU time)")
    lora = lora_memory(results, gpu)
    if lora.get("align") is not None:
        lines.append(f"* LoRA-DPO / LoRA-SFT peak memory, align: {lora['align']:.3f} "
                     f"({'meets' if lora['align'] <= 1.15 else 'misses'} the <= 1.15 target); "
                     f"TRL: {_cell(lora.get('trl'), '.3f')}")
    return lines


def render(lines: list[str], ctx: dict) -> str:
    """benchmarks/RESULTS.md: what ran where, with which versions and commands, and the table."""
    import ppo_parity

    args, (total, _) = ctx["args"], ctx["parameters"]
    (l1, l5, l15), end = ctx["load"]
    versions = ppo_parity.versions(sys.executable)
    weights_mb = total * (2 if ctx["gpu"] else 4) / 2**20
    out = ["# align against plain TRL: speed and memory", "",
           f"Written by `benchmarks/compare.py` on {ctx['started']}. Do not edit by hand; rerun:", "",
           f"    {ctx['command']}", "",
           "## Results", "", *lines, "",
           (f"One copy of the model's weights is {weights_mb:.0f} MB ({total:,} parameters, "
            f"{'bf16' if ctx['gpu'] else 'fp32'}): a DPO run that held a second copy as its reference would peak at "
            "least that much above SFT. With LoRA, align's DPO reference is the policy with its adapter disabled."),
           "", "## Setup", "",
           (f"* Machine: {ppo_parity.machine()}. Load average at start {l1:.2f} / {l5:.2f} / {l15:.2f}, at end "
            f"{end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f}."),
           *([f"* {args['note']}"] if args.get("note") else []),
           ("* GPU: measured, peak memory is `torch.cuda.max_memory_allocated()` and MFU is model FLOPs "
            "(compare_report.flops_per_token) over the measured bf16 matmul peak." if ctx["gpu"] else
            "* GPU: none on this machine, so no GPU rows (peak CUDA memory, MFU) were measured."),
           f"* align venv: {', '.join(f'{k} {v}' for k, v in versions.items())}.",
           *([f"* TRL 1.12 venv (PPO): {', '.join(f'{k} {v}' for k, v in ppo_parity.versions(ctx['trl_python']).items())}."]
             if ctx["has_ppo"] else []),
           (f"* SFT and the preference stages: model `{args['model']}` ({total:,} parameters), "
            f"examples/data/sft_chat.jsonl and examples/data/preference.jsonl (KTO: each pair split in two rows), "
            f"{args['steps']} steps, batch {args['batch_size']}, max_length "
            f"{args['max_length']}, learning rate 1e-5 constant, LoRA r 16 / alpha 32 / dropout 0.05 on all linear "
            f"layers, {args['threads']} torch thread(s), fp32 on CPU (bf16 on a GPU). Both sides save the final model."),
           (f"* PPO: benchmarks/ppo_parity.py's setup (tiny Llama policy, value and reward models from "
            f"`trl_ppo_reference.py --save-init`; 8 prompts x 16 tokens per update, 4 PPO epochs), {args['ppo_steps']}"
            " updates; `trl-nogc` is TRL with its two gc.collect() calls per update patched out." if ctx["has_ppo"]
            else "* PPO: not run."),
           (f"* Rounds: {args['rounds']}; each round runs every job's implementations back to back, alternating which "
            "goes first, each in a fresh process. Cells are medians over rounds."),
           ("* s/step: median time between consecutive optimizer steps, recorded at the trainer's `on_step_end` "
            "dispatch by benchmarks/compare_child.py for both sides (align's own PPO loop: between its per-update "
            "records), so the first step is left out. CPU s/step: the same gaps in process CPU time (all threads), "
            "which waiting for a busy CPU does not inflate: the fairer figure on a shared machine. tokens/s: input "
            "tokens (padding included; DPO counts chosen and rejected) over the same span. Peak RSS: the run's "
            "process, from `wait4`. wall s: the whole process, imports, loading, tokenization and saving included."),
           ("* TRL's SFTConfig and DPOConfig default to gradient checkpointing; align's default is off, so "
            "benchmarks/raw_trl.py turns it off too (same work per step)."),
           "", "## Commands", ""]
    for job, sides in ctx["commands"].items():
        out += [f"### {job}", "", "TRL:", "", "```", sides["trl"], "```", "", f"align: `{sides['align']}` with",
                "", "```yaml", sides["config"].rstrip(), "```", ""]
    return "\n".join(out)
