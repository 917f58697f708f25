"""Everything a PPO run is made of, built from its config: the accelerator, tokenizer, prompts, the four models
(policy, value model, frozen reference and reward), optimizer, scheduler, sampler and KL controller. Trains nothing.

The reference, reward and value models read the policy's token ids unchanged, so they must share its vocabulary.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from align import data, models, reward_functions, rl
from align.errors import ConfigError, ModelError
from align.rundir import POLICY_DIR, VALUE_MODEL_DIR
from align.sections import ModelConfig
from align.stages.ppo.config import PPOConfig
from align.stages.ppo.rollout import PolicyAndValue, PromptStream, Sampler, tokenize_prompts

if TYPE_CHECKING:
    from accelerate import Accelerator
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class PPOBuild:
    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    policy: PreTrainedModel | PeftModel
    """The policy itself (a PeftModel with LoRA); `model` wraps it with the value model for training."""
    value_model: PreTrainedModel
    model: torch.nn.Module
    """`PolicyAndValue(policy, value_model)`, prepared by the accelerator (DDP-wrapped on several processes)."""
    reference: PreTrainedModel | None
    """None: the LoRA policy with adapters disabled."""
    reward: PreTrainedModel | reward_functions.RewardFunction
    """A reward model, or a function (prompts, completions) -> scores."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    prompts: PromptStream
    sampler: Sampler
    kl_controller: rl.FixedKLController | rl.AdaptiveKLController
    total_updates: int
    stage_data: data.StageData
    probe: dict[str, Any] | None = None
    """The reward model's exploit probe (probe.json), when one ran."""


def build(cfg: PPOConfig, resume_from: str | None = None) -> PPOBuild:
    """Load tokenizer, prompts and models (the policy and value model from `resume_from` if given); trains nothing."""
    import transformers
    from accelerate import Accelerator

    ppo_cfg = cfg.ppo
    reward_fn = None
    if cfg.reward_model.function:
        reward_fn = reward_functions.load(cfg.reward_model.function, "reward_model.function")
    accelerator = Accelerator(cpu=models.use_cpu())
    world = accelerator.num_processes
    rollout_batch, mini_batches, micro_batch = ppo_cfg.rollout_batch_size, ppo_cfg.mini_batches, ppo_cfg.micro_batch
    if rollout_batch % (world * mini_batches) or (rollout_batch // world // mini_batches) % micro_batch:
        raise ConfigError(f"ppo.rollout_batch_size: {rollout_batch} prompts do not split into {world} processes "
                          f"x {mini_batches} minibatches of whole micro_batch={micro_batch} micro-batches")
    if ppo_cfg.trl_parity and world > 1:
        raise ConfigError("ppo.trl_parity: TRL's numbers are reproducible on one process only")
    models.configure_threads(cfg.train.num_threads)
    transformers.set_seed(cfg.train.seed)  # LoRA and new value heads initialise from the global generator

    tokenizer = models.load_tokenizer(cfg.model, models.resolve_path(cfg.model.name_or_path))
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ModelError(f"model: the tokenizer of {cfg.model.name_or_path!r} has no pad token other than EOS; PPO "
                         "needs one to tell a finished reply from padding")
    stage_data = data.load(cfg.data, "prompt")
    prompts = tokenize_prompts(tokenizer, stage_data.train, cfg.train.max_length - ppo_cfg.response_length,
                               cfg.data.drop_long, stage_data.dropped)
    if len(prompts) < rollout_batch:
        raise ConfigError(f"ppo.rollout_batch_size: {rollout_batch} is more than the {len(prompts)} prompts")

    policy, value_model, reference, reward = _load_models(cfg, tokenizer, Path(resume_from) if resume_from else None)
    reward = reward_fn or reward
    trainable = [q for q in list(policy.parameters()) + list(value_model.parameters()) if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
                                  fused=True)
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else max(
        1, int(cfg.train.epochs * (len(prompts) // rollout_batch)))
    scheduler = transformers.get_scheduler(cfg.train.lr_scheduler, optimizer, num_training_steps=total,
                                           num_warmup_steps=math.ceil(cfg.train.warmup_ratio * total))
    model = accelerator.prepare_model(PolicyAndValue(policy, value_model, full_logits=ppo_cfg.trl_parity))
    for frozen in (reference, reward):
        if isinstance(frozen, torch.nn.Module):
            frozen.to(accelerator.device)
    probe = _probe_reward_model(cfg, reward, tokenizer, policy, stage_data, resume_from)
    stream = PromptStream(prompts, rollout_batch, rank=accelerator.process_index, world=world,
                          generator=None if ppo_cfg.trl_parity else torch.Generator().manual_seed(cfg.train.seed))
    kl_controller = (rl.AdaptiveKLController(ppo_cfg.kl_coef, ppo_cfg.kl_target, ppo_cfg.kl_horizon)
                     if ppo_cfg.kl_controller == "adaptive" else rl.FixedKLController(ppo_cfg.kl_coef))
    n_trainable, n_total = models.count_parameters(model)
    log.info("ppo: %d prompts, %d updates of %d; %s of %s parameters trainable (policy%s + value model); "
             "reference: %s; reward: %s", len(prompts), total, rollout_batch, f"{n_trainable:,}",
             f"{n_total:,}", " LoRA" if cfg.model.lora.enabled else "",
             "adapters disabled" if reference is None else "frozen copy",
             cfg.reward_model.function or cfg.reward_model.name_or_path)
    return PPOBuild(accelerator, tokenizer, policy, value_model, model, reference, reward, optimizer, scheduler,
                    stream, Sampler.create(ppo_cfg, tokenizer), kl_controller, total, stage_data, probe)


def _probe_reward_model(cfg: PPOConfig, reward: PreTrainedModel | reward_functions.RewardFunction,
                        tokenizer: PreTrainedTokenizerBase, policy: PreTrainedModel | PeftModel,
                        stage_data: data.StageData, resume_from: str | None) -> dict[str, Any] | None:
    """The exploit probe of a reward model (align.probe.gate), run before the first update; a resumed run reports
    the probe its first start wrote."""
    if not isinstance(reward, torch.nn.Module) or not cfg.reward_model.probe:
        return None
    from align.eval import judges
    from align.probe import gate, results

    out = Path(cfg.train.output_dir)
    if resume_from is not None:
        written = out / results.PROBE_FILE
        return json.loads(written.read_text(encoding="utf-8")) if written.is_file() else None
    return gate.check_reward_model(
        judges.RewardModelJudge(reward, tokenizer, cfg.ppo.micro_batch, cfg.train.max_length), policy, tokenizer,
        [row["prompt"] for row in stage_data.train[:cfg.reward_model.probe_prompts]],
        name=cfg.reward_model.name_or_path, threshold=cfg.reward_model.probe_threshold,
        max_new_tokens=cfg.ppo.response_length, out=out, batch_size=cfg.ppo.micro_batch, seed=cfg.train.seed,
        key="reward_model",
        override="reward_model.probe_threshold=1.0 (record the probe, never refuse) or reward_model.probe=false",
    ).to_dict()


def _load_models(cfg: PPOConfig, tokenizer: PreTrainedTokenizerBase, checkpoint: Path | None) -> tuple[
        PreTrainedModel | PeftModel, PreTrainedModel, PreTrainedModel | None, PreTrainedModel | None]:
    """Policy and value model (trainable, from `checkpoint` when resuming), reference and reward model (frozen;
    reference None with LoRA, reward None with a reward function). Dropout off in all of them."""
    lora, pad = cfg.model.lora.enabled, tokenizer.pad_token_id
    policy_path = models.resolve_path(cfg.model.name_or_path)
    policy = models.load_causal_lm(cfg.model, str(checkpoint / POLICY_DIR) if checkpoint and not lora else policy_path)
    if lora:
        import peft

        policy = (peft.PeftModel.from_pretrained(policy, checkpoint / POLICY_DIR, is_trainable=True) if checkpoint
                  else peft.get_peft_model(policy, models.peft_config(cfg.model.lora, policy)))
    value_source = cfg.value_model.name_or_path or cfg.reward_model.name_or_path or cfg.model.name_or_path
    value_cfg, value_path = _frozen_model_config(cfg, value_source)
    value_model = models.load_sequence_classifier(value_cfg, str(checkpoint / VALUE_MODEL_DIR) if checkpoint
                                                  else value_path, pad_token_id=pad)
    for model in (policy, value_model):
        models.disable_dropout(model)
        model.train()
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = reward = None
    if cfg.reference is not None or not lora:  # the starting policy, loaded again from its checkpoint
        reference = models.frozen(models.load_causal_lm(
            *_frozen_model_config(cfg, cfg.reference or cfg.model.name_or_path)))
    if cfg.reward_model.name_or_path is not None:
        reward = models.frozen(models.load_sequence_classifier(
            *_frozen_model_config(cfg, cfg.reward_model.name_or_path), pad_token_id=pad))
    for name in {cfg.reference, cfg.reward_model.name_or_path, value_source} - {None, cfg.model.name_or_path}:
        models.check_same_vocabulary(
            tokenizer, models.load_tokenizer(*_frozen_model_config(cfg, name)), other=repr(name),
            against=f"the policy {cfg.model.name_or_path!r}",
            why="PPO feeds the policy's token ids to the reward, value and reference models unchanged")
    return policy, value_model, reference, reward


def _frozen_model_config(cfg: PPOConfig, name_or_path: str) -> tuple[ModelConfig, str]:
    """Config and path of a model other than the policy (reference, reward or value model): the policy's dtype and
    attention, no LoRA, no gradient checkpointing. (The value model trains, but in full.)"""
    revision = cfg.model.revision if name_or_path == cfg.model.name_or_path else None
    side = replace(cfg.model, name_or_path=name_or_path, revision=revision, chat_template=None,
                   gradient_checkpointing=False, lora=replace(cfg.model.lora, enabled=False, quantize_4bit=False))
    return side, models.resolve_path(name_or_path)
