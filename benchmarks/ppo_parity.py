"""TRL 1.12's PPOTrainer against align's PPO stage on the same tiny models, prompts and hyper-parameters: every
metric TRL logs, side by side and checked bit for bit (float32), and seconds per PPO update, run back to back.
Writes benchmarks/PPO_PARITY.md.

    .venv/bin/python benchmarks/ppo_parity.py [--steps 10] [--rounds 3] [--trl-python /tmp/venv-trl112/bin/python]

TRL runs in its own venv (trl 1.12.0 is the last release with PPO):
    python3 -m venv /tmp/venv-trl112 && /tmp/venv-trl112/bin/pip install "torch==2.13.0" "trl==1.12.0" peft tokenizers

Runs, each in a fresh process with one torch thread:
* TRL: ../shared/tools/trl_ppo_reference.py --save-init DUMP --metrics-out trl.json, with numpy's global RNG
  seeded (PPOTrainer draws its minibatch permutations from it without ever seeding it), and once more with
  gc.collect() patched out (TRL calls it twice per update; benchmarks/ppo_parity_notes.md section 7).
* ours: `align ppo --config parity.yaml` on the dumped tokenizer, models and prompts, with ppo.trl_parity=true.
Variants: the default dump (the policy never samples EOS), and the same dump with the policy biased towards EOS and
pad (truncation, sampled pads, the missing-EOS penalty and the after-EOS score slot all occur), at lr 3e-6 and 1e-3,
k1 and k3. Speed is compared on the default dump.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "tools" / "trl_ppo_reference.py"
OUT_MD = REPO / "benchmarks" / "PPO_PARITY.md"
NUMPY_SEED = 42  # = train.seed: our stage seeds numpy with it (process 0), so TRL's permutations match ours
COMPARED = ["objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
            "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg", "loss/policy_avg",
            "loss/value_avg", "val/clipfrac_avg", "val/ratio", "val/ratio_var", "val/num_eos_tokens", "lr", "episode"]

# Runs the shared reference script with numpy seeded and, with --no-gc, gc.collect() a no-op.
TRL_REFERENCE = """
import gc, runpy, sys
import numpy as np
np.random.seed(int(sys.argv[1]))
if sys.argv[2] == "no-gc":
    gc.collect = lambda *a, **k: 0
sys.argv = [sys.argv[3]] + sys.argv[4:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# TRL's PPOTrainer started from a dump (the reference script can only build its own models), with the reference
# script's PPOConfig; used for the EOS variant. argv: dump, out.json, steps, lr, kl_estimator, numpy seed.
TRL_FROM_DUMP = """
import json, sys, time, warnings
import numpy as np
import torch
dump, out, steps, lr, kl, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
np.random.seed(seed)
torch.set_num_threads(1)
warnings.filterwarnings("ignore")
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer
tok = AutoTokenizer.from_pretrained(f"{dump}/tokenizer")
prompts = json.load(open(f"{dump}/prompts.json"))
cfg = PPOConfig(output_dir=f"{dump}/trl_out", per_device_train_batch_size=8, per_device_eval_batch_size=8,
                gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=4, total_episodes=steps * 8,
                local_rollout_forward_batch_size=8, response_length=16, temperature=0.7, stop_token="eos",
                missing_eos_penalty=1.0, kl_coef=0.05, kl_estimator=kl, whiten_rewards=False, learning_rate=lr,
                num_sample_generations=0, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                gradient_checkpointing=False, seed=42, disable_tqdm=True, dataloader_num_workers=0)
class Recorder(TrainerCallback):
    logs, times, t = [], [], None
    def on_train_begin(self, args, state, control, **kw): Recorder.t = time.perf_counter()
    def on_log(self, args, state, control, logs=None, **kw): Recorder.logs.append(dict(logs or {}))
    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter(); Recorder.times.append(now - Recorder.t); Recorder.t = now
trainer = PPOTrainer(args=cfg, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(f"{dump}/policy"),
                     ref_model=AutoModelForCausalLM.from_pretrained(f"{dump}/ref_policy"),
                     reward_model=AutoModelForSequenceClassification.from_pretrained(f"{dump}/reward_model"),
                     value_model=AutoModelForSequenceClassification.from_pretrained(f"{dump}/value_model"),
                     train_dataset=Dataset.from_dict({"input_ids": prompts["train"]}),
                     eval_dataset=Dataset.from_dict({"input_ids": prompts["eval"]}), callbacks=[Recorder()])
trainer.train()
json.dump({"logs": Recorder.logs, "step_times_s": Recorder.times}, open(out, "w"), indent=1)
"""

# The reference script's tokenizer has no chat template; this one renders a prompt row back to its exact text.
IDENTITY_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def run(cmd: list[str], **kwargs) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, **kwargs)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-4000:]}")


def trl_reference(python: str, dump: Path, out: Path, steps: int, gc: bool) -> dict:
    run([python, "-c", TRL_REFERENCE, str(NUMPY_SEED), "gc" if gc else "no-gc", str(REFERENCE),
         "--steps", str(steps), "--save-init", str(dump), "--metrics-out", str(out)], cwd=tempfile.gettempdir())
    return json.loads(out.read_text())


def trl_from_dump(python: str, dump: Path, out: Path, steps: int, lr: float, kl: str) -> dict:
    run([python, "-c", TRL_FROM_DUMP, str(dump), str(out), str(steps), str(lr), kl, str(NUMPY_SEED)])
    return json.loads(out.read_text())


def eos_dump(dump: Path, into: Path) -> Path:
    """The dump with the policy's EOS and pad logits raised (ppo_parity_notes.md appendix C, scale 1.8): update 1
    then holds rows ending in EOS, rows cut by a sampled pad and rows with neither. The reference stays as it was."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(dump, into)
    model = AutoModelForCausalLM.from_pretrained(dump / "policy")
    with torch.no_grad():
        weight = model.lm_head.weight
        for token in (2, 0):  # </s> (EOS) and <pad>
            weight[token] += 1.8 * torch.ones_like(weight[token]) / weight.shape[1] ** 0.5
    model.save_pretrained(into / "policy")
    return into


def stage_inputs(dump: Path, work: Path) -> Path:
    """Our stage loads models by path with their tokenizer, and prompts as chat rows: put the dump in that shape."""
    from transformers import AutoTokenizer

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(dump / "tokenizer")
    for name in ("policy", "ref_policy", "reward_model", "value_model"):
        shutil.copytree(dump / name, work / name)
        tokenizer.save_pretrained(work / name)
    with (work / "prompts.jsonl").open("w") as f:
        for ids in json.loads((dump / "prompts.json").read_text())["train"]:
            text = tokenizer.decode(ids)
            if tokenizer(text, add_special_tokens=False)["input_ids"] != ids:
                raise SystemExit(f"prompt {ids} does not survive decode + encode; the comparison would be unfair")
            f.write(json.dumps({"prompt": [{"role": "user", "content": text}]}) + "\n")
    return work


def parity_config(work: Path, steps: int, lr: float, kl: str) -> dict:
    """TRL's hyper-parameters (trl_ppo_reference.py + PPOConfig defaults) in our config, plus the parity switches."""
    return {
        "stage": "ppo",
        "model": {"name_or_path": str(work / "policy"), "chat_template": IDENTITY_TEMPLATE},
        "reward_model": {"name_or_path": str(work / "reward_model"), "probe": False},  # TRL 1.12 has no probe
        "value_model": {"name_or_path": str(work / "value_model")},
        "reference": str(work / "ref_policy"),
        "data": {"train": [str(work / "prompts.jsonl")]},
        "train": {"output_dir": str(work / "out"), "max_steps": steps, "learning_rate": lr, "lr_scheduler": "linear",
                  "max_grad_norm": 0, "seed": 42, "num_threads": 1, "save_steps": 10_000, "overwrite": True},
        "tracking": {"backend": "jsonl"},
        "ppo": {"rollout_batch_size": 8, "mini_batches": 1, "micro_batch": 8, "ppo_epochs": 4, "response_length": 16,
                "temperature": 0.7, "missing_eos_penalty": 1.0, "missing_eos_mode": "subtract", "kl_estimator": kl,
                "kl_coef": 0.05, "gamma": 1.0, "lam": 0.95, "clip_eps": 0.2, "value_clip_eps": 0.2, "vf_coef": 0.1,
                "score_index": "after_eos", "trl_parity": True},
    }


def ours(work: Path, steps: int, lr: float, kl: str) -> dict:
    cfg = work / "parity.yaml"
    cfg.write_text(yaml.safe_dump(parity_config(work, steps, lr, kl), sort_keys=False))
    run([sys.executable, "-m", "align.cli", "--log-level", "WARNING", "ppo", "--config", str(cfg)], cwd=REPO)
    out = work / "out"
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())["metrics"]
    return {"logs": logs, "step_times_s": [m["timing/update"] for m in logs], "s_per_update": summary["s_per_update"]}


def f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def compare(our_logs: list[dict], trl_logs: list[dict]) -> tuple[int, int, list[str]]:
    """(bit-identical values, values compared, 'metric@update' that differ)."""
    same, differ = 0, []
    for step, (a, b) in enumerate(zip(our_logs, trl_logs, strict=True), 1):
        for key in COMPARED:
            if f32(a[key]) == f32(b[key]):
                same += 1
            else:
                differ.append(f"{key}@{step}")
    return same, len(our_logs) * len(COMPARED), differ


def side_by_side(our_logs: list[dict], trl_logs: list[dict]) -> list[str]:
    """Markdown rows: a value where ours and TRL's are the same float32, 'ours / TRL' where they are not."""
    steps = range(len(our_logs))
    lines = ["| metric | " + " | ".join(f"update {i + 1}" for i in steps) + " |",
             "|---|" + "---:|" * len(our_logs)]
    for key in COMPARED:
        cells = []
        for a, b in zip(our_logs, trl_logs, strict=True):
            cells.append(f"{a[key]:.7g}" if f32(a[key]) == f32(b[key]) else f"**{a[key]:.7g} / {b[key]:.7g}**")
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


def versions(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('torch', 'transformers', 'accelerate', 'peft', 'trl') if __import__('importlib.util').util.find_spec(p)}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} vCPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="PPO updates per run (10 crosses a pass over the prompts)")
    parser.add_argument("--rounds", type=int, default=3, help="back-to-back timing rounds (TRL, TRL without gc, ours)")
    parser.add_argument("--trl-python", default="/tmp/venv-trl112/bin/python")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "align_ppo_parity"))
    parser.add_argument("--out", default=str(OUT_MD))
    args = parser.parse_args()
    if not Path(args.trl_python).is_file():
        raise SystemExit(f"{args.trl_python} not found; create the TRL 1.12 venv (see the module docstring)")
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()

    # Timing rounds on the default dump, interleaved so that machine load hits every contestant alike.
    timings: dict[str, list[float]] = {"TRL 1.12": [], "TRL 1.12, gc.collect patched out": [], "align": []}
    runs: dict[str, dict] = {}
    for r in range(args.rounds):
        runs["trl"] = trl_reference(args.trl_python, root / "dump", root / "trl.json", args.steps, gc=True)
        runs["trl_nogc"] = trl_reference(args.trl_python, root / "dump", root / "trl_nogc.json", args.steps, gc=False)
        work = stage_inputs(root / "dump", root / "ours")
        runs["ours"] = ours(work, args.steps, 3e-6, "k1")
        timings["TRL 1.12"].append(statistics.mean(runs["trl"]["step_times_s"]))
        timings["TRL 1.12, gc.collect patched out"].append(statistics.mean(runs["trl_nogc"]["step_times_s"]))
        timings["align"].append(runs["ours"]["s_per_update"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s/update" for k, v in timings.items()), flush=True)

    variants = [("default dump, lr 3e-6, k1", runs["ours"]["logs"], runs["trl"]["logs"])]
    eos = eos_dump(root / "dump", root / "dump_eos")
    for label, lr, kl in (("EOS/pad dump, lr 3e-6, k1", 3e-6, "k1"), ("EOS/pad dump, lr 1e-3, k1", 1e-3, "k1"),
                          ("EOS/pad dump, lr 1e-3, k3", 1e-3, "k3")):
        trl_logs = trl_from_dump(args.trl_python, eos, root / "trl_eos.json", args.steps, lr, kl)["logs"]
        our_logs = ours(stage_inputs(eos, root / "ours_eos"), args.steps, lr, kl)["logs"]
        variants.append((label, our_logs, trl_logs))

    report = render(args, variants, timings, load, runs)
    Path(args.out).write_text(report)
    print(report)
    return 0


def render(args, variants, timings, load, runs) -> str:
    trl_versions, our_versions = versions(args.trl_python), versions(sys.executable)
    results = [(label, *compare(ours_, trl_)) for label, ours_, trl_ in variants]
    identical = sum(same for _, same, _, _ in results)
    compared = sum(total for _, _, total, _ in results)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    lines = ["# PPO parity: align vs TRL 1.12", "",
             (f"Written by `benchmarks/ppo_parity.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}. Do not edit by hand; "
             "rerun the script."), "",
             "## Summary", "",
             f"* **Metrics: {identical}/{compared} logged values are bit-identical (float32)** over {len(variants)} "
             f"runs of {args.steps} updates: every metric TRL logs except `eps` and `epoch` (wall-clock and a "
             "ratio of `episode`), rollout and optimisation, through a second pass over the prompts. "
             + ("Nothing differs." if identical == compared else "See the tables for what differs."),
             (f"* **Speed: {medians['align']:.3f} s per update for align** against {medians['TRL 1.12']:.3f} s for "
             f"TRL 1.12 as shipped and {medians['TRL 1.12, gc.collect patched out']:.3f} s for TRL with its two "
             "`gc.collect()` calls per update patched out (medians of the rounds below). The models are tiny, so "
             "this measures per-update overhead more than arithmetic."),
             ("* Parity needs `ppo.trl_parity: true` (TRL's temperature + 1e-7, pad tokens may be sampled, prompts "
             "shuffled by the global torch generator, approxkl/entropy/ratio averaged over padding, the training "
             "pass's logits at every position), "
             "`ppo.score_index: after_eos` and `train.max_grad_norm: 0`, plus TRL's numpy RNG seeded like ours. "
             "Everything else is the stage's normal code path."), "",
             "## Setup", "",
             (f"* Machine: {machine()}; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
             "one torch thread per process; no GPU."),
             f"* TRL venv: {', '.join(f'{k} {v}' for k, v in trl_versions.items())}.",
             f"* align venv: {', '.join(f'{k} {v}' for k, v in our_versions.items())}.",
             (f"* Models: `trl_ppo_reference.py` builds them (Llama, hidden 64, 2 layers, 128,960 parameters; BPE vocab "
             "429, pad 0, EOS 2) and dumps them with `--save-init`; both sides start from those files. 8 prompts "
             "per update, 16 response tokens, 4 PPO epochs of one minibatch, temperature 0.7, KL coefficient 0.05, "
             f"missing-EOS penalty 1.0, {args.steps} updates (64 prompts: update 9 starts a second pass)."),
             f"* Command: `.venv/bin/python benchmarks/ppo_parity.py --steps {args.steps} --rounds {args.rounds}`.",
             "",
             ("Our config (the parity switches are `ppo.trl_parity: true`, `ppo.score_index: after_eos` and "
             "`train.max_grad_norm: 0`; everything else is TRL's hyper-parameters written in our schema):"), "",
             "```yaml", yaml.safe_dump(parity_config(Path("<work>"), args.steps, 3e-6, "k1"), sort_keys=False,
                                       width=1000).rstrip(),
             "```", "",
             "## Metrics", "",
             (f"Compared: {len(COMPARED)} metrics per update, as float32 (TRL logs `.item()` of float32 tensors). "
             "A cell shows one value where both sides logged the same float32, **ours / TRL** where they differ. "
             "TRL's numpy RNG is seeded with 42, like ours: unseeded, TRL's own optimisation metrics change from "
             "run to run (notes section 4.1)."), ""]
    for (label, our_logs, trl_logs), (_, same, total, differ) in zip(variants, results, strict=True):
        step1 = [k for k in COMPARED if k.startswith("objective/") and f"{k}@1" in differ]
        verdict = (f"**{same}/{total} values bit-identical**" + (f"; differing: {', '.join(differ)}" if differ else "")
                   + (f". Update-1 objective/* differ: {step1}" if step1 else ". Update-1 `objective/*`: identical."))
        lines += [f"### {label}", "", verdict, ""] + side_by_side(our_logs, trl_logs) + [""]
    lines += ["## Seconds per PPO update (default dump, back to back)", "",
              ("Mean over the updates of each run; TRL's from its `on_step_end` callback, ours from the stage's loop "
              "(`s_per_update` in summary.json: rollout, PPO epochs, metrics and logging). Rounds run TRL, TRL "
              "without gc, ours, one after the other."), "",
              "| run | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " | median |",
              "|---|" + "---:|" * (args.rounds + 1)]
    for name, values in timings.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | **{statistics.median(values):.3f}** |")
    ours_per_step = ", ".join(f"{t:.3f}" for t in runs["ours"]["step_times_s"])
    trl_per_step = ", ".join(f"{t:.3f}" for t in runs["trl_nogc"]["step_times_s"])
    lines += ["", (f"Last round, per update: ours (rollout + PPO epochs) {ours_per_step}; TRL without gc "
              f"{trl_per_step}."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
