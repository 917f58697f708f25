"""Reward stage: a one-output sequence classifier trained on preference pairs through trl.RewardTrainer.

Loss: -log sigmoid(r_chosen - r_rejected) (Bradley-Terry, as in InstructGPT https://huggingface.co/papers/2203.02155),
plus center_rewards_coefficient * mean((r_chosen + r_rejected)^2) when set (https://huggingface.co/papers/2312.09244).
Each sequence is the chat template of prompt + reply cut right after the reply's EOS token, and padding uses another
token, so the score is read at that EOS token, where the PPO stage reads it. A pair longer than train.max_length is
dropped and counted whatever data.drop_long says: a reply cut short has no EOS to score (TRL would drop it uncounted).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from align import chat, data, models
from align.errors import ConfigError
from align.observe.tracking import Tracker
from align.rundir import StageResult
from align.sections import DataConfig, ModelConfig, TrackingConfig, TrainConfig
from align.stages import trainer as trainer_stage

log = logging.getLogger(__name__)

MODEL_RANKING = "reward model"


@dataclass(kw_only=True)
class RewardConfig:
    stage: Literal["reward"] = "reward"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    """Initial weights: a base model or the sft stage's output (a LoRA adapter dir is merged first). A causal LM
    gets a fresh one-output score head."""
    data: DataConfig
    """Preference pairs; the eval pairs (data.eval or data.eval_fraction) give eval_accuracy."""
    train: TrainConfig
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    center_rewards_coefficient: float | None = None
    """Add coefficient x mean((r_chosen + r_rejected)^2) to the loss so rewards centre on 0 (the paper uses 0.01);
    null: off."""
    save_merged: bool = False
    """With LoRA: also save the adapter merged into the base weights under <output_dir>/merged."""
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra trl.RewardConfig fields we do not expose, checked against that class; for experts."""
    held_out_checks: bool = True
    """After training, on the eval pairs: accuracy beside the baselines it must beat (longer / shorter reply, the
    starting model's log-prob margin) with 95% intervals per source, and the exploit probe (probe.json)."""
    probe_samples: int = 100
    """Eval pairs whose chosen replies the exploit probe degrades (8 variants each)."""

    def check(self) -> list[str]:
        problems = []
        if self.probe_samples < 1:
            problems.append(f"probe_samples: must be >= 1, got {self.probe_samples}")
        if self.save_merged and not self.model.lora.enabled:
            problems.append("save_merged: only applies with model.lora.enabled=true")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient <= 0:
            problems.append(f"center_rewards_coefficient: must be > 0 or null, got {self.center_rewards_coefficient}")
        problems += trainer_stage.check_trainer_overrides(
            self.trainer_overrides, "RewardConfig",
            {**trainer_stage.OWNED_ARGUMENTS, "center_rewards_coefficient": "center_rewards_coefficient"},
        )
        return problems


def build(cfg: RewardConfig, tracker: Tracker) -> trainer_stage.TrainerBuild:
    """Load tokenizer, pairs and model and return a ready trainer. Trains nothing."""
    import datasets
    import transformers
    import trl

    models.configure_threads(cfg.train.num_threads)
    model_path = models.resolve_path(cfg.model.name_or_path)
    tokenizer = models.load_tokenizer(cfg.model, model_path)

    stage_data = data.load(cfg.data, "preference")
    dropped: Counter = Counter()

    def tokenize(row: dict) -> dict:
        return {f"{side}_ids": tokenizer(chat.reward_text(tokenizer, row["prompt"], row[side], tools=row.get("tools")),
                                         add_special_tokens=False)["input_ids"] for side in ("chosen", "rejected")}

    limits = {"max_length": cfg.train.max_length, "drop_long": True, "dropped": dropped}
    train_rows = data.tokenize_all(stage_data.train, tokenize, split="train", **limits)
    # Eval pairs keep their rows too: the held-out checks score the pairs the trainer evaluates.
    eval_fitted = data.fit_to_length(stage_data.eval, tokenize, data.LengthLimit(cfg.train.max_length, True),
                                     dropped=dropped, split="eval")
    eval_rows = [encoding for _, encoding in eval_fitted]
    stage_data.dropped = dropped
    if not train_rows:
        raise ConfigError(f"data.train: no usable pairs after formatting and length limits ({dict(dropped)})")

    transformers.set_seed(cfg.train.seed)  # a fresh score head initialises from the global generator
    model = models.load_sequence_classifier(cfg.model, model_path, pad_token_id=tokenizer.pad_token_id)
    has_eval = bool(eval_rows)
    stage_callbacks = trainer_stage.trainer_callbacks(cfg, model, tracker)
    arguments = trainer_stage.training_arguments(cfg.train, cfg.model, has_eval=has_eval,
                                                 default_metric="eval_accuracy")
    arguments["per_device_eval_batch_size"] = trainer_stage.pair_eval_batch_size(len(eval_rows), cfg.train.batch_size)
    args = trainer_stage.trl_arguments(
        trl.RewardConfig, cfg.trainer_overrides,
        **arguments,
        max_length=cfg.train.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
    )
    trainer = trl.RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=models.peft_config(cfg.model.lora, model, "SEQ_CLS"),
        callbacks=stage_callbacks.callbacks,
    )
    trainable, total = models.count_parameters(trainer.model)
    log.info("reward: %s, %d train / %d eval pairs (eval batches of %d), %s of %s parameters trainable",
             cfg.model.name_or_path, len(train_rows), len(eval_rows), args.per_device_eval_batch_size,
             f"{trainable:,}", f"{total:,}")
    kept = [row for row, _ in eval_fitted]
    checks = _held_out_checks(cfg, kept, stage_data.origins_of(kept), tokenizer) if cfg.held_out_checks else None
    return trainer_stage.TrainerBuild(trainer=trainer, tokenizer=tokenizer, stage_data=stage_data,
                                      callbacks=stage_callbacks, held_out_checks=checks)


def _held_out_checks(cfg: RewardConfig, pairs: list[dict], origins: list[str],
                     tokenizer) -> Callable[[Path], dict[str, Any]]:
    """The saved reward model's eval accuracy beside its baselines, and its exploit probe (align.probe)."""

    def checks(out: Path) -> dict[str, Any]:
        from align.eval import baselines, judges, rankings
        from align.probe import scoring as probe_scoring
        from align.probe.config import ProbeConfig

        prompts = [row["prompt"] for row in pairs]
        device = models.device()
        judge = judges.RewardModelJudge.load(str(out), device, cfg.train.batch_size, cfg.train.max_length)
        chosen, rejected = (judge.score(prompts, [row[side] for row in pairs]) for side in ("chosen", "rejected"))
        starting = models.load_causal_lm(cfg.model, models.resolve_path(cfg.model.name_or_path)).to(device).eval()
        table = rankings.table(pairs, origins, {MODEL_RANKING: baselines.outcomes(chosen, rejected)},
                               starting_policy=starting, tokenizer=tokenizer, batch_size=cfg.train.batch_size,
                               seed=cfg.train.seed)
        del starting
        log.info("reward: held-out pairs\n%s", baselines.markdown(table, [MODEL_RANKING]))
        probed = pairs[:cfg.probe_samples]
        probe = probe_scoring.score_and_write(
            judge, prompts[:cfg.probe_samples], [baselines.reply_text(row["chosen"]) for row in probed],
            reward_model=str(out), threshold=ProbeConfig.threshold, out=out, batch_size=cfg.train.batch_size,
            seed=cfg.train.seed)
        return {"held_out": {"pairs": len(pairs), "accuracy": table}, "probe": probe.to_dict()}

    return checks


def run(cfg: RewardConfig) -> StageResult:
    return trainer_stage.run_trainer_stage(cfg, "reward", build)
