"""SFT stage: supervised fine-tuning on chat or prompt-completion data through trl.SFTTrainer.

By default the loss covers the assistant replies and their EOS token only (`align.chat` builds the labels from
the chat template, so templates without `{% generation %}` markers work too).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from align import chat, data, models
from align.errors import ConfigError
from align.observe.tracking import Tracker
from align.rundir import StageResult
from align.sections import DataConfig, ModelConfig, TrackingConfig, TrainConfig
from align.stages import fused_head, packing
from align.stages import trainer as trainer_stage

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SFTConfig:
    stage: Literal["sft"] = "sft"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    assistant_only_loss: bool = True
    """Train on assistant replies (and their EOS) only; false trains on every token, prompts included."""
    packing: bool = False
    """Pack several examples into each train.max_length sequence (padding-free, per-example attention)."""
    save_merged: bool = False
    """With LoRA: also save the adapter merged into the base weights under <output_dir>/merged."""
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra trl.SFTConfig fields we do not expose, checked against that class; for experts."""

    def check(self) -> list[str]:
        problems = []
        if self.save_merged and not self.model.lora.enabled:
            problems.append("save_merged: only applies with model.lora.enabled=true")
        problems += trainer_stage.check_trainer_overrides(
            self.trainer_overrides, "SFTConfig",
            {**trainer_stage.OWNED_ARGUMENTS, "packing": "packing", "assistant_only_loss": "assistant_only_loss",
             "completion_only_loss": "assistant_only_loss"},
        )
        return problems


def build(cfg: SFTConfig, tracker: Tracker) -> trainer_stage.TrainerBuild:
    """Load tokenizer, data and model and return a ready trainer. Trains nothing."""
    import datasets
    import trl

    fused_head.score_labelled_positions_only()
    models.configure_threads(cfg.train.num_threads)
    model_path = models.resolve_path(cfg.model.name_or_path)
    tokenizer = models.load_tokenizer(cfg.model, model_path)

    stage_data = data.load(cfg.data, "sft")
    dropped: Counter = Counter()

    def tokenize(row: dict) -> dict:
        return chat.tokenize_sft_row(tokenizer, row, assistant_only=cfg.assistant_only_loss)

    limits = {"max_length": cfg.train.max_length, "drop_long": cfg.data.drop_long, "dropped": dropped}
    train_rows = data.tokenize_all(stage_data.train, tokenize, split="train", **limits)
    eval_rows = data.tokenize_all(stage_data.eval, tokenize, split="eval", **limits)
    stage_data.dropped = dropped
    if not train_rows:
        raise ConfigError(f"data.train: no usable rows after formatting and length limits ({dict(dropped)})")

    model = models.load_causal_lm(cfg.model, model_path)
    has_eval = bool(eval_rows)
    # Varlen (flash) kernels keep packed examples apart by themselves: TRL's padding-free packing is right there.
    # Other kernels need our block-diagonal mask, see align.stages.packing.
    trl_packs = cfg.packing and model.config._attn_implementation in packing.VARLEN_ATTENTION
    collator = None
    if cfg.packing and not trl_packs:
        train_rows = packing.pack(train_rows, cfg.train.max_length)
        eval_rows = packing.pack(eval_rows, cfg.train.max_length) if has_eval else eval_rows
        collator = packing.PackedCollator(pad_token_id=tokenizer.pad_token_id, dtype=model.dtype)
        log.info("packed into %d train sequences of up to %d tokens", len(train_rows), cfg.train.max_length)
    stage_callbacks = trainer_stage.trainer_callbacks(cfg, model, tracker, tokenizer=tokenizer, stage_data=stage_data)
    args = trainer_stage.trl_arguments(
        trl.SFTConfig, cfg.trainer_overrides,
        **trainer_stage.training_arguments(cfg.train, cfg.model, has_eval=has_eval),
        max_length=cfg.train.max_length,
        packing=trl_packs,
    )
    trainer_class = packing.packed_sft_trainer(trl) if collator is not None else trl.SFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=models.peft_config(cfg.model.lora, model),
        callbacks=stage_callbacks.callbacks,
    )
    trainable, total = models.count_parameters(trainer.model)
    log.info("sft: %s, %d train / %d eval examples, %s of %s parameters trainable", cfg.model.name_or_path,
             len(train_rows), len(eval_rows), f"{trainable:,}", f"{total:,}")
    return trainer_stage.TrainerBuild(trainer=trainer, tokenizer=tokenizer, stage_data=stage_data,
                                      callbacks=stage_callbacks)


def run(cfg: SFTConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "sft", build)
