"""What the PPO stage writes: checkpoints (and resuming from them), sample tables and the final model.

`checkpoint-N/` holds everything needed to continue a run exactly where it stopped: `policy/` (the model, or the
LoRA adapter) and `value_model/` in HF format, the optimizer, scheduler, KL controller and prompt-stream state, the
run's own record (health baselines and alerts, the first update's score: what summary.json reports of the whole run),
and every process's RNG states. It is written as `tmp-checkpoint-N/` and renamed when complete; `trainer_state.json`
inside marks it complete (`align.rundir.checkpoints`).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align import generation, models, rundir
from align.errors import ConfigError
from align.observe.tracking import Tracker
from align.rundir import MERGED_DIR, POLICY_DIR, SAMPLES_FILE, TRAINER_STATE_FILE, VALUE_MODEL_DIR
from align.stages.ppo.rollout import Experience
from align.stages.ppo.setup import PPOBuild


def save_checkpoint(parts: PPOBuild, out: Path, update: int, keep: int, record: dict[str, Any]) -> None:
    """Write checkpoint-`update` with the run's `record` (JSON-safe), then delete all but the newest `keep`
    checkpoints. Call on every process."""
    accelerator = parts.accelerator
    final = rundir.checkpoint_dir(out, update)
    tmp = final.with_name(f"tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-write
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_state_{accelerator.process_index}.pth")
    if accelerator.is_main_process:
        parts.policy.save_pretrained(tmp / POLICY_DIR)
        parts.value_model.save_pretrained(tmp / VALUE_MODEL_DIR)
        torch.save({"optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                    "kl_controller": parts.kl_controller.state_dict(), "prompts": parts.prompts.state_dict(),
                    "record": record},
                   tmp / "training_state.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        meta = {"global_step": update, "processes": accelerator.num_processes}
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps(meta))
        tmp.rename(final)
        complete, _ = rundir.checkpoints(out)
        for old in complete[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(parts: PPOBuild, path: Path) -> tuple[int, dict[str, Any]]:
    """Restore all but the weights (`setup.build` loads those from `path`); returns the update it was taken at and
    the run's record saved with it (empty in a checkpoint written before align kept one)."""
    meta = json.loads((path / TRAINER_STATE_FILE).read_text())
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
    return meta["global_step"], state.get("record", {})


def write_samples(parts: PPOBuild, tracker: Tracker, experience: Experience, scores: torch.Tensor,
                  update: int) -> None:
    """Append the rollout's prompts, completions and scores to samples.jsonl (and a W&B table); main process."""
    if not parts.accelerator.is_main_process:
        return
    prompts = generation.decode_prompts(parts.tokenizer, experience.queries, parts.sampler.pad_id)
    completions = parts.tokenizer.batch_decode(experience.responses, skip_special_tokens=True)
    rows = [{"prompt": prompt, "completion": completion, "score": score}
            for prompt, completion, score in zip(prompts, completions, scores.tolist(), strict=True)]
    tracker.log_table("samples", SAMPLES_FILE, rows, update)


def save_final(parts: PPOBuild, out: Path, merged: bool) -> dict[str, Any]:
    """Save the policy (or adapter; `merged` adds the merged model under merged/), tokenizer and value model; main
    process. Returns summary.json's entries about the model."""
    parts.policy.save_pretrained(out)
    parts.tokenizer.save_pretrained(out)
    parts.value_model.save_pretrained(out / VALUE_MODEL_DIR)
    if merged:
        models.save_merged(parts.policy, parts.tokenizer, out / MERGED_DIR)
    trainable, total = models.count_parameters(parts.model)
    return {"parameters": {"trainable": trainable, "total": total}, "lora": hasattr(parts.policy, "peft_config")}


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
