"""What the PPO stage writes: checkpoints (and resuming from them), sample tables, the final model and summary.

`checkpoint-N/` holds everything needed to continue a run exactly where it stopped: `policy/` (the model, or the LoRA adapter) and `value_model/` in HF format, the optimizer,
scheduler, KL controller and prompt-stream state, and every process's RNG states. It is written as
`tmp-checkpoint-N/` and renamed when complete; `trainer_state.json` inside marks it complete for `runner`.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from align import models, runner
from align.errors import ConfigError

if TYPE_CHECKING:
    from align.stages.ppo import PPOBuild


def save_checkpoint(b: PPOBuild, out: Path, update: int, keep: int) -> None:
    """Write checkpoint-`update`, then delete all but the newest `keep` checkpoints. Call on every process."""
    acc = b.accelerator
    tmp = out / f"tmp-checkpoint-{update}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-write
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_state_{acc.process_index}.pth")
    if acc.is_main_process:
        b.policy.save_pretrained(tmp / "policy")
        b.value_model.save_pretrained(tmp / "value_model")
        torch.save({"optimizer": b.optimizer.state_dict(), "scheduler": b.scheduler.state_dict(),
                    "kl_controller": b.kl_controller.state_dict(), "prompts": b.prompts.state_dict()},
                   tmp / "training_state.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"global_step": update, "processes": acc.num_processes}))
        tmp.rename(out / f"checkpoint-{update}")
        complete, _ = runner.checkpoints(out)
        for old in complete[:-keep]:
            shutil.rmtree(old)
    acc.wait_for_everyone()


def load_checkpoint(b: PPOBuild, path: Path) -> int:
    """Restore all but the weights (`ppo.build` loads those from `path`); returns the update it was taken at."""
    meta = json.loads((path / "trainer_state.json").read_text())
    if meta["processes"] != b.accelerator.num_processes:
        raise ConfigError(f"train.resume: {path} was written by {meta['processes']} processes; resume with as many")
    state = torch.load(path / "training_state.pt", weights_only=False)
    b.optimizer.load_state_dict(state["optimizer"])
    b.scheduler.load_state_dict(state["scheduler"])
    b.kl_controller.load_state_dict(state["kl_controller"])
    b.prompts.load_state_dict(state["prompts"])  # before the RNG states: replaying a shuffle may draw from them
    rng = torch.load(path / f"rng_state_{b.accelerator.process_index}.pth", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return meta["global_step"]


def write_samples(b: PPOBuild, tracker, exp, scores: torch.Tensor, update: int, out: Path) -> None:
    """Append the rollout's prompts, completions and scores to samples.jsonl (and a W&B table); main process."""
    if not b.accelerator.is_main_process:
        return
    pad = b.sampler.pad_id
    prompts = b.tokenizer.batch_decode([row[row != pad] for row in exp.queries], skip_special_tokens=True)
    completions = b.tokenizer.batch_decode(exp.responses, skip_special_tokens=True)
    rows = [[update, prompt, completion, score] for prompt, completion, score
            in zip(prompts, completions, scores.tolist(), strict=True)]
    with (out / "samples.jsonl").open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(zip(("step", "prompt", "completion", "score"), row)), ensure_ascii=False) + "\n")
    if tracker.run is not None:
        import wandb

        tracker.run.log({"samples": wandb.Table(columns=["step", "prompt", "completion", "score"], data=rows)},
                        step=update)


def save_final(b: PPOBuild, out: Path, summary: dict[str, Any], merged: bool) -> None:
    """The policy (or adapter; `merged` adds the merged model under merged/), tokenizer, value model, summary.json."""
    b.policy.save_pretrained(out)
    b.tokenizer.save_pretrained(out)
    b.value_model.save_pretrained(out / "value_model")
    if merged:
        models.save_merged(b.policy, b.tokenizer, out / "merged")
    trainable, total = models.count_parameters(b.model)
    record = {"stage": "ppo", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": summary,
              "data": b.stage_data.report, "dropped": dict(b.stage_data.dropped),
              "parameters": {"trainable": trainable, "total": total}, "lora": hasattr(b.policy, "peft_config")}
    (out / runner.SUMMARY).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
