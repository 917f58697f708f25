"""What the PPO stage writes: checkpoints (and resuming from them), sample tables, the final model and summary.

`checkpoint-N/` holds everything needed to continue a run exactly where it stopped: `policy/` (the model, or the
LoRA adapter) and `value_model/` in HF format, the optimizer, scheduler, KL controller and prompt-stream state, and
every process's RNG states. It is written as `tmp-checkpoint-N/` and renamed when complete; `trainer_state.json`
inside marks it complete for `runner`.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align import models, runner
from align.errors import ConfigError
from align.stages.ppo.rollout import Experience
from align.stages.ppo.setup import PPOBuild
from align.tracking import Tracker


def save_checkpoint(parts: PPOBuild, out: Path, update: int, keep: int) -> None:
    """Write checkpoint-`update`, then delete all but the newest `keep` checkpoints. Call on every process."""
    accelerator = parts.accelerator
    tmp = out / f"tmp-checkpoint-{update}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-write
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_state_{accelerator.process_index}.pth")
    if accelerator.is_main_process:
        parts.policy.save_pretrained(tmp / "policy")
        parts.value_model.save_pretrained(tmp / "value_model")
        torch.save({"optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                    "kl_controller": parts.kl_controller.state_dict(), "prompts": parts.prompts.state_dict()},
                   tmp / "training_state.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        meta = {"global_step": update, "processes": accelerator.num_processes}
        (tmp / "trainer_state.json").write_text(json.dumps(meta))
        tmp.rename(out / f"checkpoint-{update}")
        complete, _ = runner.checkpoints(out)
        for old in complete[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(parts: PPOBuild, path: Path) -> int:
    """Restore all but the weights (`setup.build` loads those from `path`); returns the update it was taken at."""
    meta = json.loads((path / "trainer_state.json").read_text())
    if meta["processes"] != parts.accelerator.num_processes:
        raise ConfigError(f"train.resume: {path} was written by {meta['processes']} processes; resume with as many")
    state = torch.load(path / "training_state.pt", weights_only=False)
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.kl_controller.load_state_dict(state["kl_controller"])
    parts.prompts.load_state_dict(state["prompts"])  # before the RNG states: replaying a shuffle may draw from them
    rng = torch.load(path / f"rng_state_{parts.accelerator.process_index}.pth", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return meta["global_step"]


def write_samples(parts: PPOBuild, tracker: Tracker, experience: Experience, scores: torch.Tensor, update: int,
                  out: Path) -> None:
    """Append the rollout's prompts, completions and scores to samples.jsonl (and a W&B table); main process."""
    if not parts.accelerator.is_main_process:
        return
    pad = parts.sampler.pad_id
    prompts = parts.tokenizer.batch_decode([row[row != pad] for row in experience.queries], skip_special_tokens=True)
    completions = parts.tokenizer.batch_decode(experience.responses, skip_special_tokens=True)
    rows = [[update, prompt, completion, score] for prompt, completion, score
            in zip(prompts, completions, scores.tolist(), strict=True)]
    with (out / "samples.jsonl").open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(zip(("step", "prompt", "completion", "score"), row)), ensure_ascii=False) + "\n")
    if tracker.run is not None:
        import wandb

        tracker.run.log({"samples": wandb.Table(columns=["step", "prompt", "completion", "score"], data=rows)},
                        step=update)


def save_final(parts: PPOBuild, out: Path, summary: dict[str, Any], merged: bool) -> None:
    """The policy (or adapter; `merged` adds the merged model under merged/), tokenizer, value model, summary.json."""
    parts.policy.save_pretrained(out)
    parts.tokenizer.save_pretrained(out)
    parts.value_model.save_pretrained(out / "value_model")
    if merged:
        models.save_merged(parts.policy, parts.tokenizer, out / "merged")
    trainable, total = models.count_parameters(parts.model)
    record = {"stage": "ppo", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": summary,
              "data": parts.stage_data.report, "dropped": dict(parts.stage_data.dropped),
              "parameters": {"trainable": trainable, "total": total}, "lora": hasattr(parts.policy, "peft_config")}
    (out / runner.SUMMARY).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
