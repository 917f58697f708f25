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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from align import data, models
from align.errors import ConfigError
from align.observe.tracking import Tracker
from align.rundir import StageResult
from align.sections import DataConfig, LoraConfig, ModelConfig, TrackingConfig, TrainConfig
from align.stages import fused_head, ref_cache
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
    import datasets
    import trl

    if cfg.precompute_ref_log_probs and cfg.ref_cache:
        ref_cache.check_writable()
    fused_head.score_labelled_positions_only()
    models.configure_threads(cfg.train.num_threads)
    model_path = models.resolve_path(cfg.model.name_or_path)
    tokenizer = models.load_tokenizer(cfg.model, model_path)

    stage_data = data.load(cfg.data, "preference")
    train_rows = _pairs_within_length(stage_data.train, tokenizer, cfg, stage_data.dropped, "train")
    eval_rows = _pairs_within_length(stage_data.eval, tokenizer, cfg, stage_data.dropped, "eval")
    if not train_rows:
        raise ConfigError(f"data.train: no usable pairs after formatting and length limits "
                          f"({dict(stage_data.dropped)})")

    policy, reference, described = _load_models(cfg, model_path, tokenizer)
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
    trainer_class, precompute, summary = trl.DPOTrainer, {}, {"reference": described}
    if cfg.precompute_ref_log_probs:
        # Hashed before TRL adds a fresh LoRA adapter, `policy` is the reference (with sft_adapter=continue: base +
        # the sft adapter, which TRL copies as the frozen reference adapter).
        ref_logps = ref_cache.RefLogps.create(reference or policy, args, tokenizer, persist=cfg.ref_cache)
        trainer_class, precompute = ref_cache.dpo_trainer(trl), {"ref_logps": ref_logps}
        summary["reference_log_probs"] = ref_logps.report
    trainer = trainer_class(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=None if cfg.sft_adapter == "continue" else models.peft_config(cfg.model.lora, policy),
        callbacks=stage_callbacks.callbacks,
        **precompute,
    )
    trainable, total = models.count_parameters(trainer.model)
    log.info("dpo: %s, %d train / %d eval pairs, %s of %s parameters trainable; reference: %s",
             cfg.model.name_or_path, len(train_rows), len(eval_rows), f"{trainable:,}", f"{total:,}", described)
    checks = _held_out_checks(cfg, eval_rows, stage_data.origins_of(eval_rows), tokenizer)
    return trainer_stage.TrainerBuild(trainer=trainer, tokenizer=tokenizer, stage_data=stage_data,
                                      callbacks=stage_callbacks, summary=summary,
                                      held_out_checks=checks if cfg.held_out_checks else None)


def _held_out_checks(cfg: DPOConfig, pairs: list[dict], origins: list[str],
                     tokenizer) -> Callable[[Path], dict[str, Any]]:
    """The saved policy's implicit-reward ranking of the eval pairs beside its baselines (align.eval.baselines)."""

    def checks(out: Path) -> dict[str, Any]:
        from align.eval import baselines, rankings, scoring

        device = models.device()
        reference_cfg = replace(cfg.model, name_or_path=cfg.reference or cfg.model.name_or_path,
                                revision=None if cfg.reference else cfg.model.revision, gradient_checkpointing=False,
                                lora=LoraConfig())
        prompts = [row["prompt"] for row in pairs]
        logps = {}
        for name, model_cfg in (("policy", replace(reference_cfg, name_or_path=str(out), revision=None)),
                                ("reference", reference_cfg)):
            model = models.frozen(models.load_causal_lm(model_cfg, models.resolve_path(model_cfg.name_or_path)))
            logps[name] = [scoring.reply_logps_and_lengths(model.to(device), tokenizer, prompts,
                                                           [row[side] for row in pairs], cfg.train.batch_size)
                           for side in ("chosen", "rejected")]
            del model
        (policy_c, _), (policy_r, _) = logps["policy"]
        (reference_c, _), (reference_r, _) = logps["reference"]
        implicit = baselines.outcomes([p - r for p, r in zip(policy_c, reference_c, strict=True)],
                                      [p - r for p, r in zip(policy_r, reference_r, strict=True)])
        table = rankings.table(pairs, origins, {MODEL_RANKING: implicit,
                                                **rankings.log_prob_rankings(*logps["reference"])}, seed=cfg.train.seed)
        log.info("dpo: held-out pairs\n%s", baselines.markdown(table, [MODEL_RANKING]))
        return {"held_out": {"pairs": len(pairs), "accuracy": table}}

    return checks


def run(cfg: DPOConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "dpo", build)


def _pairs_within_length(rows: list[dict], tokenizer, cfg: DPOConfig, dropped: Counter, split: str) -> list[dict]:
    """The pairs that keep reply tokens within train.max_length, counting the others. They stay untokenized: TRL
    tokenizes them again and cuts the over-long ones to their first train.max_length tokens."""
    max_length = cfg.train.max_length

    def token_ids(row: dict) -> data.Encoding:
        template = {"tools": row.get("tools"), "tokenize": True, "return_dict": True}
        ids = {side: tokenizer.apply_chat_template(row["prompt"] + row[side], **template)["input_ids"]
               for side in ("chosen", "rejected")}
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, **template)["input_ids"]
        return {"prompt": prompt, **ids}

    def no_reply_token(ids: data.Encoding) -> str | None:
        return f"prompt alone fills train.max_length={max_length}" if len(ids["prompt"]) >= max_length else None

    fitted = data.fit_to_length(rows, token_ids, data.LengthLimit(max_length, cfg.data.drop_long), dropped=dropped,
                                split=split, unusable=no_reply_token)
    return [row for row, _ in fitted]


def _load_models(cfg: DPOConfig, model_path: str, tokenizer) -> tuple[Any, Any, str]:
    """(policy, frozen reference or None for TRL to derive, what the reference is)."""
    adapter_base = models.adapter_base(model_path)
    if cfg.sft_adapter == "continue":
        if adapter_base is None:
            raise ConfigError(f"sft_adapter: continue needs model.name_or_path to be a LoRA adapter dir; "
                              f"{cfg.model.name_or_path!r} is a full checkpoint")
        import peft

        base = models.load_causal_lm(cfg.model, models.resolve_path(adapter_base))
        policy = peft.PeftModel.from_pretrained(base, model_path, is_trainable=True)
    else:
        policy = models.load_causal_lm(cfg.model, model_path)  # an adapter dir comes back merged

    starting = f"the starting policy {cfg.model.name_or_path}" + (" (merged)" if adapter_base else "")
    if cfg.reference is not None:
        reference_cfg = replace(cfg.model, name_or_path=cfg.reference, revision=None, chat_template=None,
                                gradient_checkpointing=False, lora=LoraConfig())
        reference = models.frozen(models.load_causal_lm(reference_cfg))
        policy_name = f"the policy {cfg.model.name_or_path!r}"
        models.check_same_vocabulary(tokenizer, models.load_tokenizer(reference_cfg),
                                     other=f"reference: {cfg.reference!r}", against=policy_name,
                                     why="DPO scores the policy's token ids with it unchanged")
        return policy, reference, f"frozen {cfg.reference}"
    if cfg.precompute_ref_log_probs:
        return policy, None, f"log-probs of {starting}, precomputed before training"
    if cfg.model.lora.enabled:
        return policy, None, f"{starting}: the policy with its LoRA adapter disabled"
    reference_cfg = replace(cfg.model, gradient_checkpointing=False, lora=LoraConfig())
    return policy, models.frozen(models.load_causal_lm(reference_cfg, model_path)), f"frozen copy of {starting}"

