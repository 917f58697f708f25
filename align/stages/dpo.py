"""DPO stage: optimise the policy on preference pairs against a frozen reference through trl.DPOTrainer.

Paper: https://huggingface.co/papers/2305.18290. The reference is the starting policy unless `reference` names one:
a frozen copy loaded here, or with LoRA the policy itself with its adapter disabled (no second model in memory).
Starting from an sft LoRA adapter dir, `sft_adapter` chooses between merging it and training it further:
- merge: base + sft adapter merged in memory; then full fine-tuning, or with model.lora.enabled a fresh DPO adapter
  whose base is recorded as the sft dir (so the output loads back as base + sft + dpo); reference = the merged model.
- continue: the sft adapter itself keeps training (its own rank and targets); reference = a frozen merged copy.
Pairs whose prompt alone fills train.max_length have no reply token left to train on; TRL drops them without a
count, we drop them first and count them in summary.json.
With precompute_ref_log_probs the reference scores every pair once before training; with ref_cache those log-probs
are kept on disk and reused by later runs with the same reference and data (align/stages/ref_cache.py).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from align import data, models
from align.errors import ConfigError
from align.observe.tracking import Tracker
from align.rundir import StageResult
from align.sections import DataConfig, ModelConfig, TrackingConfig, TrainConfig
from align.stages import fused_head, preference, ref_cache
from align.stages import trainer as trainer_stage

log = logging.getLogger(__name__)

MODEL_RANKING = "dpo implicit reward"

# The losses trl.DPOTrainer 1.16 implements (its loss dispatch has no public list to import).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass(kw_only=True)
class DPOConfig:
    stage: Literal["dpo"] = "dpo"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    """The starting policy, usually the sft stage's output; also the frozen reference unless `reference` is set."""
    reference: str | None = None
    """An explicit frozen reference (alias, dir or hub id; a LoRA adapter dir is merged). null: the starting policy."""
    sft_adapter: Literal["merge", "continue"] = "merge"
    """When model.name_or_path is a LoRA adapter dir. merge: merge it into its base, then train all weights or (with
    model.lora.enabled) a fresh DPO adapter. continue: keep training that adapter (leave model.lora.enabled=false)."""
    data: DataConfig
    train: TrainConfig
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    beta: float = 0.1
    """Pull toward the reference: higher stays closer (typical 0.01-0.5); the regulariser tau for ipo."""
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    """One or more of TRL's DPO losses (sigmoid is the paper's); several are summed with loss_weights."""
    loss_weights: list[float] | None = None
    """A weight per loss_type (null: 1.0 each)."""
    label_smoothing: float = 0.0
    """Assumed probability that a preference label is flipped: conservative DPO (sigmoid), robust ([0, 0.5)),
    exo_pair (> 0; the paper uses 1e-3)."""
    precompute_ref_log_probs: bool = False
    """Compute the reference log-probs of every pair once, before training, instead of a reference forward pass at
    every step; no reference model stays in memory while training."""
    ref_cache: bool = True
    """With precompute_ref_log_probs: persist those log-probs under $ALIGN_CACHE_DIR/ref_logps/ and reuse them when
    the reference weights, tokenized pairs, max_length and TRL version match (re-runs, resumes, sweeps over beta or
    the loss). No effect without precompute_ref_log_probs."""
    save_merged: bool = False
    """With LoRA: also save the policy merged into its base weights under <output_dir>/merged."""
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra trl.DPOConfig fields we do not expose, checked against that class; for experts."""
    held_out_checks: bool = True
    """After training, on the eval pairs: the saved policy's implicit-reward accuracy beside the baselines it must
    beat (longer / shorter reply, the reference's own log-prob margin), with 95% intervals per source."""

    def check(self) -> list[str]:
        problems = []
        if self.beta <= 0:
            problems.append(f"beta: must be > 0, got {self.beta}")
        if not self.loss_type:
            problems.append("loss_type: name at least one loss, e.g. [sigmoid]")
        for i, name in enumerate(self.loss_type):
            if name not in LOSS_TYPES:
                close = difflib.get_close_matches(name, LOSS_TYPES, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else f" Losses: {', '.join(LOSS_TYPES)}."
                problems.append(f"loss_type[{i}]: unknown DPO loss {name!r}.{hint}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            problems.append(f"loss_weights: needs one weight per loss_type ({len(self.loss_type)}), "
                            f"got {len(self.loss_weights)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if "robust" in self.loss_type and self.label_smoothing >= 0.5:
            problems.append(f"label_smoothing: the robust loss needs it in [0, 0.5), got {self.label_smoothing}")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0.0:
            problems.append("label_smoothing: the exo_pair loss needs it > 0 (the paper uses 1e-3)")
        if self.sft_adapter == "continue" and (self.model.lora.enabled or self.model.freeze.active()):
            problems.append("sft_adapter: continue trains the sft adapter with the rank and targets it was trained "
                            "with; leave model.lora.enabled=false and model.freeze unset")
        if self.save_merged and not (self.model.lora.enabled or self.sft_adapter == "continue"):
            problems.append("save_merged: only applies when training an adapter (model.lora.enabled=true)")
        if self.precompute_ref_log_probs and self.trainer_overrides.get("sync_ref_model"):
            problems.append("trainer_overrides.sync_ref_model: moves the reference during training, so log-probs "
                            "precomputed before it go stale; set precompute_ref_log_probs=false to use it")
        if self.trainer_overrides.get("padding_free"):
            problems.append("trainer_overrides.padding_free: trl.DPOTrainer 1.16 ignores it and pads as usual (its "
                            "padding-free path is disabled since TRL's DPO refactor); remove it")
        problems += trainer_stage.check_trainer_overrides(
            self.trainer_overrides, "DPOConfig",
            {**trainer_stage.OWNED_ARGUMENTS, **{k: k for k in ("beta", "loss_type", "loss_weights",
                                                              "label_smoothing", "precompute_ref_log_probs",
                                                              "ref_cache")}},
        )
        return problems


def build(cfg: DPOConfig, tracker: Tracker) -> trainer_stage.TrainerBuild:
    """Load tokenizer, pairs, policy and reference and return a ready trainer. Trains nothing."""
    import trl

    if cfg.precompute_ref_log_probs and cfg.ref_cache:
        ref_cache.check_writable()
    fused_head.score_labelled_positions_only()
    models.configure_threads(cfg.train.num_threads)
    model_path = models.resolve_path(cfg.model.name_or_path)
    tokenizer = models.load_tokenizer(cfg.model, model_path)

    stage_data = data.load(cfg.data, "preference")
    train_rows, eval_rows = (preference.pairs_within_length(rows, tokenizer, cfg.train.max_length, cfg.data.drop_long,
                                                            stage_data.dropped, split)
                             for rows, split in ((stage_data.train, "train"), (stage_data.eval, "eval")))
    if not train_rows:
        raise ConfigError(f"data.train: no usable pairs after formatting and length limits "
                          f"({dict(stage_data.dropped)})")

    policy, reference, described = preference.load_policy_and_reference(cfg, model_path, tokenizer, "dpo")
    has_eval = bool(eval_rows)
    stage_callbacks = trainer_stage.trainer_callbacks(cfg, policy, tracker, tokenizer=tokenizer, stage_data=stage_data)
    arguments = trainer_stage.training_arguments(cfg.train, cfg.model, has_eval=has_eval,
                                          default_metric="eval_rewards/accuracies")
    arguments["per_device_eval_batch_size"] = trainer_stage.pair_eval_batch_size(len(eval_rows), cfg.train.batch_size)
    args = trainer_stage.trl_arguments(
        trl.DPOConfig, cfg.trainer_overrides,
        **arguments,
        max_length=cfg.train.max_length,
        beta=cfg.beta,
        loss_type=list(cfg.loss_type),
        loss_weights=cfg.loss_weights,
        label_smoothing=cfg.label_smoothing,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
    )
    summary = {"reference": described}
    trainer = preference.reference_trainer(trl.DPOTrainer, cfg, policy, reference, args, tokenizer, train_rows,
                                           eval_rows, stage_callbacks.callbacks, summary)
    trainable, total = models.count_parameters(trainer.model)
    log.info("dpo: %s, %d train / %d eval pairs, %s of %s parameters trainable; reference: %s",
             cfg.model.name_or_path, len(train_rows), len(eval_rows), f"{trainable:,}", f"{total:,}", described)
    checks = preference.held_out_checks(cfg, eval_rows, stage_data.origins_of(eval_rows), tokenizer, stage="dpo",
                                        ranking=MODEL_RANKING)
    return trainer_stage.TrainerBuild(trainer=trainer, tokenizer=tokenizer, stage_data=stage_data,
                                      callbacks=stage_callbacks, summary=summary,
                                      held_out_checks=checks if cfg.held_out_checks else None)


def run(cfg: DPOConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "dpo", build)
