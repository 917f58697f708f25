"""KTO stage: optimise the policy on unpaired feedback (a reply rated desirable or undesirable) against a frozen
reference through trl.KTOTrainer.

Paper: https://huggingface.co/papers/2402.01306. Data is either unpaired rows (data_formats kind `kto`: prompt,
completion, label) or preference pairs; each pair becomes two rows, its chosen reply desirable and its rejected one
undesirable, and summary.json `kto_rows` counts both splits. A data section mixing the two kinds is refused (name the
sources in two runs, or convert one). The reference, the sft adapter handling and the reference log-prob cache work
as in the dpo stage (align/stages/preference.py, align/stages/ref_cache.py).

TRL's KTO estimates its KL term from mismatched (prompt, completion) rows built by rotating the completions inside
each batch, so it reads rows in order (sequential sampling). The rows are therefore shuffled once with train.seed
here: in file order a split pair would put a prompt's own other reply in that "mismatched" slot.

The desirable/undesirable weights are checked against the paper's recommendation (its Eq. 8, which TRL only logs):
(desirable_weight x desirable rows) / (undesirable_weight x undesirable rows) in [1, 4/3]. Outside it the stage
stops before loading weights with an error that gives the weights to use; check_weight_ratio=false trains anyway.
"""

from __future__ import annotations

import logging
import random
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

MODEL_RANKING = "kto implicit reward"
RATIO_RANGE = (1.0, 4 / 3)
"""The recommended (desirable_weight x desirable rows) / (undesirable_weight x undesirable rows) (paper, Eq. 8)."""


@dataclass(kw_only=True)
class KTOConfig:
    stage: Literal["kto"] = "kto"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    """The starting policy, usually the sft stage's output; also the frozen reference unless `reference` is set."""
    reference: str | None = None
    """An explicit frozen reference (alias, dir or hub id; a LoRA adapter dir is merged). null: the starting policy."""
    sft_adapter: Literal["merge", "continue"] = "merge"
    """When model.name_or_path is a LoRA adapter dir: merge it into its base, or keep training it (as in dpo)."""
    data: DataConfig
    """Unpaired rows (prompt, completion, true/false label) or preference pairs (split into two rows each); one kind
    for train and eval. Eval pairs also give the held-out implicit-reward check."""
    train: TrainConfig
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    beta: float = 0.1
    """Pull toward the reference: higher stays closer (typical 0.01-0.5)."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: the paper's loss; apo_zero_unpaired: APO-zero's unpaired variant (no KL term)."""
    desirable_weight: float = 1.0
    """Weight of the desirable rows' loss; with undesirable_weight, balances unequal counts."""
    undesirable_weight: float = 1.0
    """Weight of the undesirable rows' loss."""
    check_weight_ratio: bool = True
    """Refuse weights outside the recommended ratio for the data's desirable/undesirable counts (module docstring)."""
    precompute_ref_log_probs: bool = False
    """Compute the reference log-probs of every row once, before training; no reference model while training."""
    ref_cache: bool = True
    """With precompute_ref_log_probs: persist them under $ALIGN_CACHE_DIR/ref_logps/ and reuse them when the
    reference, tokenized rows (the batch size shapes KTO's mismatched rows), max_length and TRL version match."""
    save_merged: bool = False
    """With LoRA: also save the policy merged into its base weights under <output_dir>/merged."""
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra trl.KTOConfig fields we do not expose, checked against that class; for experts."""
    held_out_checks: bool = True
    """After training, on eval pairs (not unpaired eval rows): the saved policy's implicit-reward accuracy beside the
    baselines it must beat, with 95% intervals per source, as in dpo."""

    def check(self) -> list[str]:
        problems = []
        if self.beta <= 0:
            problems.append(f"beta: must be > 0, got {self.beta}")
        for key in ("desirable_weight", "undesirable_weight"):
            if getattr(self, key) <= 0:
                problems.append(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.loss_type == "kto" and self.train.batch_size < 2:
            problems.append(f"train.batch_size: KTO's KL term pairs each row with another row of its batch; needs "
                            f">= 2, got {self.train.batch_size}")
        if self.sft_adapter == "continue" and (self.model.lora.enabled or self.model.freeze.active()):
            problems.append("sft_adapter: continue trains the sft adapter with the rank and targets it was trained "
                            "with; leave model.lora.enabled=false and model.freeze unset")
        if self.save_merged and not (self.model.lora.enabled or self.sft_adapter == "continue"):
            problems.append("save_merged: only applies when training an adapter (model.lora.enabled=true)")
        if self.precompute_ref_log_probs and self.trainer_overrides.get("sync_ref_model"):
            problems.append("trainer_overrides.sync_ref_model: moves the reference during training, so log-probs "
                            "precomputed before it go stale; set precompute_ref_log_probs=false to use it")
        owned = ("beta", "loss_type", "desirable_weight", "undesirable_weight", "precompute_ref_log_probs")
        problems += trainer_stage.check_trainer_overrides(
            self.trainer_overrides, "KTOConfig",
            {**trainer_stage.OWNED_ARGUMENTS, **{k: k for k in owned}})
        if self.loss_type == "kto" and self.trainer_overrides.get("train_sampling_strategy", "sequential") != \
                "sequential":
            problems.append("trainer_overrides.train_sampling_strategy: KTO's KL term needs the rows in order "
                            "(sequential); the stage shuffles them once with train.seed instead")
        return problems


def build(cfg: KTOConfig, tracker: Tracker) -> trainer_stage.TrainerBuild:
    """Load tokenizer, rows, policy and reference and return a ready trainer. Trains nothing."""
    import trl

    if cfg.precompute_ref_log_probs and cfg.ref_cache:
        ref_cache.check_writable()
    fused_head.score_labelled_positions_only()
    models.configure_threads(cfg.train.num_threads)
    model_path = models.resolve_path(cfg.model.name_or_path)
    tokenizer = models.load_tokenizer(cfg.model, model_path)

    kind = _data_kind(cfg.data)
    stage_data = data.load(cfg.data, kind)
    limits = (tokenizer, cfg.train.max_length, cfg.data.drop_long, stage_data.dropped)
    eval_pairs: list[dict] = []
    if kind == "preference":
        train_pairs, eval_pairs = (preference.pairs_within_length(rows, *limits, split)
                                   for rows, split in ((stage_data.train, "train"), (stage_data.eval, "eval")))
        train_rows, eval_rows = unpair(train_pairs), unpair(eval_pairs)
    else:
        train_rows, eval_rows = (preference.replies_within_length(rows, *limits, split)
                                 for rows, split in ((stage_data.train, "train"), (stage_data.eval, "eval")))
    if not train_rows:
        raise ConfigError(f"data.train: no usable rows after formatting and length limits "
                          f"({dict(stage_data.dropped)})")
    counts = {"from": "preference pairs, each split in two" if kind == "preference" else "unpaired rows",
              "train": label_counts(train_rows), "eval": label_counts(eval_rows)}
    counts["weight_ratio"] = weight_ratio(cfg, counts["train"])
    shuffle = random.Random(cfg.train.seed)
    shuffle.shuffle(train_rows)
    shuffle.shuffle(eval_rows)

    policy, reference, described = preference.load_policy_and_reference(cfg, model_path, tokenizer, "kto")
    has_eval = bool(eval_rows)
    stage_callbacks = trainer_stage.trainer_callbacks(cfg, policy, tracker, tokenizer=tokenizer, stage_data=stage_data)
    arguments = trainer_stage.training_arguments(cfg.train, cfg.model, has_eval=has_eval,
                                                 default_metric="eval_rewards/margins")
    args = trainer_stage.trl_arguments(
        trl.KTOConfig, cfg.trainer_overrides, **arguments, max_length=cfg.train.max_length, beta=cfg.beta,
        loss_type=cfg.loss_type, desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs)
    summary = {"reference": described, "kto_rows": counts}
    trainer = preference.reference_trainer(
        trl.KTOTrainer, cfg, policy, reference, args, tokenizer, train_rows, eval_rows, stage_callbacks.callbacks,
        summary, layout=ref_cache.KTO if cfg.loss_type == "kto" else ref_cache.KTO_WITHOUT_KL)
    trainable, total = models.count_parameters(trainer.model)
    log.info("kto: %s, %s train / %s eval rows (desirable / undesirable), %s of %s parameters trainable; "
             "reference: %s", cfg.model.name_or_path, _pair(counts["train"]), _pair(counts["eval"]),
             f"{trainable:,}", f"{total:,}", described)
    checks = None
    if cfg.held_out_checks and eval_pairs:
        checks = preference.held_out_checks(cfg, eval_pairs, stage_data.origins_of(eval_pairs), tokenizer,
                                            stage="kto", ranking=MODEL_RANKING)
    return trainer_stage.TrainerBuild(trainer=trainer, tokenizer=tokenizer, stage_data=stage_data,
                                      callbacks=stage_callbacks, summary=summary, held_out_checks=checks)


def run(cfg: KTOConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "kto", build)


def unpair(pairs: list[dict]) -> list[dict]:
    """Each pair as two kto rows: (prompt, chosen, desirable) and (prompt, rejected, undesirable)."""
    rows = []
    for pair in pairs:
        extra = {"tools": pair["tools"]} if "tools" in pair else {}
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True, **extra})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False, **extra})
    return rows


def label_counts(rows: list[dict]) -> dict[str, int]:
    desirable = sum(1 for row in rows if row["label"])
    return {"desirable": desirable, "undesirable": len(rows) - desirable}


def weight_ratio(cfg: KTOConfig, counts: dict[str, int]) -> float | None:
    """(desirable_weight x desirable) / (undesirable_weight x undesirable) of the train rows; a ConfigError outside
    RATIO_RANGE (or with rows of one label only) unless check_weight_ratio is off. None without undesirable rows."""
    desirable, undesirable = counts["desirable"], counts["undesirable"]
    ratio = (cfg.desirable_weight * desirable) / (cfg.undesirable_weight * undesirable) if undesirable else None
    if not cfg.check_weight_ratio:
        return ratio
    if not desirable or not undesirable:
        missing = "desirable (label true)" if not desirable else "undesirable (label false)"
        raise ConfigError(f"data.train: no {missing} rows among {desirable + undesirable}; KTO learns from both. "
                          f"Set check_weight_ratio=false to train anyway")
    low, high = RATIO_RANGE
    if not low <= ratio <= high:
        scale = undesirable * cfg.undesirable_weight / desirable
        inverse = desirable * cfg.desirable_weight / undesirable
        raise ConfigError(
            f"desirable_weight, undesirable_weight: ({cfg.desirable_weight} x {desirable} desirable) / "
            f"({cfg.undesirable_weight} x {undesirable} undesirable) = {ratio:.3g}, outside the recommended "
            f"[1, 4/3]; set desirable_weight in [{scale * low:.3g}, {scale * high:.3g}] or undesirable_weight in "
            f"[{inverse / high:.3g}, {inverse / low:.3g}], or check_weight_ratio=false")
    return ratio


def _data_kind(cfg: DataConfig) -> str:
    """kto or preference: the one kind every train and eval source gives; a mix is a ConfigError naming them."""
    import data_formats

    kinds: dict[str, list[str]] = {}
    for source in data.sources(cfg, "train") + data.sources(cfg, "eval"):
        kinds.setdefault(data_formats.source_kind(source), []).append(source.path)
    wrong = {kind: paths for kind, paths in kinds.items() if kind not in ("kto", "preference")}
    if wrong:
        listed = "; ".join(f"{', '.join(paths)} ({kind})" for kind, paths in wrong.items())
        raise ConfigError(f"data: kto trains on unpaired rows or preference pairs, not {listed}")
    if len(kinds) > 1:
        raise ConfigError(f"data: mixes unpaired rows ({', '.join(kinds['kto'])}) with preference pairs "
                          f"({', '.join(kinds['preference'])}); use one kind per run")
    return next(iter(kinds))


def _pair(counts: dict[str, int]) -> str:
    return f"{counts['desirable']} / {counts['undesirable']}"
