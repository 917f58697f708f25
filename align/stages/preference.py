"""What the preference stages (dpo, kto, orpo, simpo) share: the length fit of pairs, the policy and its frozen
reference (dpo, kto), the held-out check of the saved policy's implicit reward on eval pairs, and the whole build of
the reference-free stages (orpo, simpo).

The reference is the starting policy unless `cfg.reference` names one: a frozen copy loaded here, or with LoRA the
policy itself with its adapter disabled (no second model in memory). Starting from an sft LoRA adapter dir,
`cfg.sft_adapter` chooses between merging it and training it further (align/stages/dpo.py says how).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align import data, models
from align.errors import ConfigError
from align.sections import LoraConfig
from align.stages import ref_cache
from align.stages import trainer as trainer_stage

if TYPE_CHECKING:
    from align.observe.tracking import Tracker

log = logging.getLogger(__name__)


def pairs_within_length(rows: list[dict], tokenizer, max_length: int, drop_long: bool, dropped: Counter,
                        split: str) -> list[dict]:
    """The pairs that keep reply tokens within max_length, counting the others. They stay untokenized: TRL
    tokenizes them again and cuts the over-long ones to their first max_length tokens."""
    return _within_length(rows, tokenizer, ("chosen", "rejected"), max_length, drop_long, dropped, split)


def replies_within_length(rows: list[dict], tokenizer, max_length: int, drop_long: bool, dropped: Counter,
                          split: str) -> list[dict]:
    """`pairs_within_length` for unpaired (kto) rows: prompt + completion."""
    return _within_length(rows, tokenizer, ("completion",), max_length, drop_long, dropped, split)


def _within_length(rows: list[dict], tokenizer, sides: tuple[str, ...], max_length: int, drop_long: bool,
                   dropped: Counter, split: str) -> list[dict]:
    def token_ids(row: dict) -> data.Encoding:
        template = {"tools": row.get("tools"), "tokenize": True, "return_dict": True}
        ids = {side: tokenizer.apply_chat_template(row["prompt"] + row[side], **template)["input_ids"]
               for side in sides}
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, **template)["input_ids"]
        return {"prompt": prompt, **ids}

    def no_reply_token(ids: data.Encoding) -> str | None:
        return f"prompt alone fills train.max_length={max_length}" if len(ids["prompt"]) >= max_length else None

    fitted = data.fit_to_length(rows, token_ids, data.LengthLimit(max_length, drop_long), dropped=dropped,
                                split=split, unusable=no_reply_token)
    return [row for row, _ in fitted]


def load_policy_and_reference(cfg: Any, model_path: str, tokenizer, stage: str) -> tuple[Any, Any, str]:
    """(policy, frozen reference or None for TRL to derive, what the reference is), for a stage config with
    `model`, `reference`, `sft_adapter` and `precompute_ref_log_probs`."""
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
                                     why=f"{stage.upper()} scores the policy's token ids with it unchanged")
        return policy, reference, f"frozen {cfg.reference}"
    if cfg.precompute_ref_log_probs:
        return policy, None, f"log-probs of {starting}, precomputed before training"
    if cfg.model.lora.enabled:
        return policy, None, f"{starting}: the policy with its LoRA adapter disabled"
    reference_cfg = replace(cfg.model, gradient_checkpointing=False, lora=LoraConfig())
    return policy, models.frozen(models.load_causal_lm(reference_cfg, model_path)), f"frozen copy of {starting}"


def reference_trainer(trainer_class, cfg: Any, policy, reference, args, tokenizer, train_rows: list[dict],
                      eval_rows: list[dict], callbacks: list, summary: dict[str, Any],
                      layout: ref_cache.Layout = ref_cache.DPO):
    """`trainer_class` (trl.DPOTrainer, trl.KTOTrainer) on the policy and its reference; with
    cfg.precompute_ref_log_probs the reference log-probs come from align's cache (`layout`: the trainer's columns),
    and how they were got goes into `summary`."""
    import datasets

    precompute = {}
    if cfg.precompute_ref_log_probs:
        # Hashed before TRL adds a fresh LoRA adapter, `policy` is the reference (with sft_adapter=continue: base +
        # the sft adapter, which TRL copies as the frozen reference adapter).
        ref_logps = ref_cache.RefLogps.create(reference or policy, args, tokenizer, persist=cfg.ref_cache,
                                              layout=layout)
        trainer_class, precompute = ref_cache.cached_trainer(trainer_class), {"ref_logps": ref_logps}
        summary["reference_log_probs"] = ref_logps.report
    return trainer_class(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=None if cfg.sft_adapter == "continue" else models.peft_config(cfg.model.lora, policy),
        callbacks=callbacks,
        **precompute,
    )


def held_out_checks(cfg: Any, pairs: list[dict], origins: list[str], tokenizer, *, stage: str, ranking: str,
                    reference_free: bool = False) -> Callable[[Path], dict[str, Any]]:
    """The saved policy's implicit-reward ranking of the eval pairs beside its baselines (align.eval.baselines).

    With a reference (dpo, kto) the implicit reward of a reply is its policy log-prob minus the reference's (the
    reference is `cfg.reference` or the starting policy). Reference-free (orpo, simpo) it is the policy's per-token
    log-prob, which SimPO's reward scales and ORPO's log-odds grows with. The starting policy's own rankings are the
    baselines either way.
    """

    def checks(out: Path) -> dict[str, Any]:
        from align.eval import baselines, rankings, scoring

        device = models.device()
        reference = getattr(cfg, "reference", None)
        starting_cfg = replace(cfg.model, name_or_path=reference or cfg.model.name_or_path,
                               revision=None if reference else cfg.model.revision, gradient_checkpointing=False,
                               lora=LoraConfig())
        prompts = [row["prompt"] for row in pairs]
        logps = {}
        for name, model_cfg in (("policy", replace(starting_cfg, name_or_path=str(out), revision=None)),
                                ("starting", starting_cfg)):
            model = models.frozen(models.load_causal_lm(model_cfg, models.resolve_path(model_cfg.name_or_path)))
            logps[name] = [scoring.reply_logps_and_lengths(model.to(device), tokenizer, prompts,
                                                           [row[side] for row in pairs], cfg.train.batch_size)
                           for side in ("chosen", "rejected")]
            del model
        (policy_c, length_c), (policy_r, length_r) = logps["policy"]
        (starting_c, _), (starting_r, _) = logps["starting"]
        if reference_free:
            implicit = baselines.outcomes([p / max(1, n) for p, n in zip(policy_c, length_c, strict=True)],
                                          [p / max(1, n) for p, n in zip(policy_r, length_r, strict=True)])
        else:
            implicit = baselines.outcomes([p - r for p, r in zip(policy_c, starting_c, strict=True)],
                                          [p - r for p, r in zip(policy_r, starting_r, strict=True)])
        table = rankings.table(pairs, origins, {ranking: implicit, **rankings.log_prob_rankings(*logps["starting"])},
                               seed=cfg.train.seed)
        log.info("%s: held-out pairs\n%s", stage, baselines.markdown(table, [ranking]))
        return {"held_out": {"pairs": len(pairs), "accuracy": table}}

    return checks


def reference_free_build(cfg: Any, tracker: Tracker, *, stage: str, trainer_class, config_class, ranking: str,
                         **loss_arguments: Any) -> trainer_stage.TrainerBuild:
    """The build of a stage with no reference model (orpo, simpo): pairs, the policy (a LoRA adapter dir comes back
    merged; with model.lora.enabled a fresh adapter), the TRL trainer with `loss_arguments`. Trains nothing."""
    import datasets

    models.configure_threads(cfg.train.num_threads)
    model_path = models.resolve_path(cfg.model.name_or_path)
    tokenizer = models.load_tokenizer(cfg.model, model_path)
    stage_data = data.load(cfg.data, "preference")
    train_rows, eval_rows = (pairs_within_length(rows, tokenizer, cfg.train.max_length, cfg.data.drop_long,
                                                 stage_data.dropped, split)
                             for rows, split in ((stage_data.train, "train"), (stage_data.eval, "eval")))
    if not train_rows:
        raise ConfigError(f"data.train: no usable pairs after formatting and length limits "
                          f"({dict(stage_data.dropped)})")
    policy = models.load_causal_lm(cfg.model, model_path)
    has_eval = bool(eval_rows)
    stage_callbacks = trainer_stage.trainer_callbacks(cfg, policy, tracker, tokenizer=tokenizer, stage_data=stage_data)
    arguments = trainer_stage.training_arguments(cfg.train, cfg.model, has_eval=has_eval,
                                                 default_metric="eval_rewards/accuracies")
    arguments["per_device_eval_batch_size"] = trainer_stage.pair_eval_batch_size(len(eval_rows), cfg.train.batch_size)
    # Their batches carry chosen_/rejected_input_ids, no input_ids: the Trainer would warn at every step and count
    # nothing.
    arguments["include_num_input_tokens_seen"] = False
    args = trainer_stage.trl_arguments(config_class, cfg.trainer_overrides, **arguments,
                                       max_length=cfg.train.max_length, **loss_arguments)
    trainer = trainer_class(
        model=policy,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=models.peft_config(cfg.model.lora, policy),
        callbacks=stage_callbacks.callbacks,
    )
    trainable, total = models.count_parameters(trainer.model)
    log.info("%s: %s, %d train / %d eval pairs, %s of %s parameters trainable; no reference model", stage,
             cfg.model.name_or_path, len(train_rows), len(eval_rows), f"{trainable:,}", f"{total:,}")
    checks = None
    if cfg.held_out_checks and eval_rows:
        checks = held_out_checks(cfg, eval_rows, stage_data.origins_of(eval_rows), tokenizer, stage=stage,
                                 ranking=ranking, reference_free=True)
    return trainer_stage.TrainerBuild(trainer=trainer, tokenizer=tokenizer, stage_data=stage_data,
                                      callbacks=stage_callbacks, summary={"reference": "none (reference-free)"},
                                      held_out_checks=checks)
