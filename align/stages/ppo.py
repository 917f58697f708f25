"""PPO stage: optimise the policy against a reward model (or a Python rule) with a per-token KL penalty to a frozen
reference, a separate value model, GAE and clipped objectives. Our own loop on transformers + accelerate (+ peft).

Papers: PPO https://huggingface.co/papers/1707.06347, RLHF details https://huggingface.co/papers/2403.17031.
Every equation is a call into `align.rl`; rollouts are in `align.ppo_rollout`, each update's advantages, PPO epochs
and metrics in `align.ppo_update`. Unlike TRL 1.12's PPOTrainer:
1. the pad token is never sampled (in TRL a sampled pad silently ends the response);
2. one optimizer step per minibatch with explicit gradient accumulation (TRL steps on every micro-batch);
3. gradients are clipped at train.max_grad_norm, the policy's and the value model's separately (TRL never clips);
4. advantages are whitened over the rollout batch of all processes, and metrics are global;
5. approxkl, entropy and ratio are averaged over valid tokens only (TRL includes padding).
Policy and value model share one AdamW and learning rate, the value loss weighted by ppo.vf_coef (as in TRL).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from align import config, data, models, ppo_outputs, ppo_rollout, ppo_update, reward_functions, rl, runner
from align.errors import ConfigError, ModelError
from align.ppo_sections import PPOSection, RewardModelConfig, ValueModelConfig
from align.runner import StageResult
from align.sections import DataConfig, ModelConfig, TrackingConfig, TrainConfig
from align.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PPOConfig:
    stage: Literal["ppo"] = "ppo"
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    """The policy to optimise (usually the sft stage's output); LoRA optional."""
    reward_model: RewardModelConfig
    value_model: ValueModelConfig = field(default_factory=ValueModelConfig)
    reference: str | None = None
    """The KL reference. null: the starting policy (with LoRA its adapters disabled, otherwise a frozen copy)."""
    data: DataConfig
    """Prompts: `prompt` rows, or the prompts of any preference / sft source."""
    train: TrainConfig
    """max_steps counts PPO updates (-1: `epochs` passes over the prompts); learning_rate 3e-6 with a linear
    schedule is the usual full fine-tuning choice; max_grad_norm 0 turns clipping off."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ppo: PPOSection = field(default_factory=PPOSection)
    save_merged: bool = False
    """With LoRA: also save the policy merged into its base weights under <output_dir>/merged."""

    def check(self) -> list[str]:
        problems = []
        if self.save_merged and not self.model.lora.enabled:
            problems.append("save_merged: only applies with model.lora.enabled=true")
        if (self.train.batch_size, self.train.grad_accum) != (4, 1):
            problems.append("train.batch_size: PPO batches with ppo.rollout_batch_size, ppo.mini_batches and "
                            "ppo.micro_batch; leave train.batch_size and train.grad_accum unset")
        if self.data.eval or self.data.eval_fraction or self.train.eval_steps or self.train.early_stopping.enabled:
            problems.append("data.eval: PPO has no evaluation pass; remove data.eval, data.eval_fraction, "
                            "train.eval_steps and train.early_stopping")
        if self.model.freeze.active():
            problems.append("model.freeze: not supported by PPO; train fewer weights with model.lora instead")
        if self.ppo.response_length >= self.train.max_length:
            problems.append(f"train.max_length: must exceed ppo.response_length={self.ppo.response_length} "
                            "(it bounds prompt + response)")
        if self.ppo.trl_parity and self.train.max_grad_norm > 0:
            problems.append("ppo.trl_parity: TRL 1.12 never clips gradients; set train.max_grad_norm=0")
        return problems


@dataclass
class PPOBuild:
    accelerator: Any
    tokenizer: Any
    policy: Any
    """The policy itself (a PeftModel with LoRA); `model` wraps it with the value model for training."""
    value_model: Any
    model: Any
    reference: Any
    """None: the LoRA policy with adapters disabled."""
    reward: Any
    """A reward model, or a function (prompts, completions) -> scores."""
    optimizer: Any
    scheduler: Any
    prompts: ppo_rollout.PromptStream
    sampler: ppo_rollout.Sampler
    kl_controller: Any
    total_updates: int
    stage_data: data.StageData


def build(cfg: PPOConfig, tracker: Tracker, resume_from: str | None = None) -> PPOBuild:
    """Load tokenizer, prompts and models (the policy and value model from `resume_from` if given); trains nothing."""
    import transformers
    from accelerate import Accelerator

    p = cfg.ppo
    reward_fn = None
    if cfg.reward_model.function:
        reward_fn = reward_functions.load(cfg.reward_model.function, "reward_model.function")
    if cfg.train.lr_scheduler not in [s.value for s in transformers.SchedulerType]:
        raise ConfigError(f"train.lr_scheduler: unknown scheduler {cfg.train.lr_scheduler!r}")
    accelerator = Accelerator(cpu=models.use_cpu())
    world = accelerator.num_processes
    if p.rollout_batch_size % (world * p.mini_batches) or (p.rollout_batch_size // world // p.mini_batches) % p.micro_batch:
        raise ConfigError(f"ppo.rollout_batch_size: {p.rollout_batch_size} prompts do not split into {world} processes "
                          f"x {p.mini_batches} minibatches of whole micro_batch={p.micro_batch} micro-batches")
    if p.trl_parity and world > 1:
        raise ConfigError("ppo.trl_parity: TRL's numbers are reproducible on one process only")
    models.configure_threads(cfg.train.num_threads)
    transformers.set_seed(cfg.train.seed)  # LoRA and new value heads initialise from the global generator

    tokenizer = models.load_tokenizer(cfg.model, models.resolve_path(cfg.model.name_or_path))
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ModelError(f"model: the tokenizer of {cfg.model.name_or_path!r} has no pad token other than EOS; PPO "
                         "needs one to tell a finished reply from padding")
    stage_data = data.load(cfg.data, "prompt")
    limit = cfg.train.max_length - p.response_length
    prompts, too_long = ppo_rollout.tokenize_prompts(tokenizer, stage_data.train, limit, cfg.data.drop_long)
    if too_long:
        stage_data.dropped.update({f"train: prompt over {limit} tokens": too_long} if cfg.data.drop_long else {})
        log.info("%d prompts over train.max_length - ppo.response_length = %d tokens: %s", too_long, limit,
                 "dropped" if cfg.data.drop_long else "kept their last tokens")
    if len(prompts) < p.rollout_batch_size:
        raise ConfigError(f"ppo.rollout_batch_size: {p.rollout_batch_size} is more than the {len(prompts)} prompts")

    policy, value_model, reference, reward = _load_models(cfg, tokenizer, Path(resume_from) if resume_from else None)
    reward = reward_fn or reward
    trainable = [q for q in list(policy.parameters()) + list(value_model.parameters()) if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
                                  fused=True)
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else max(
        1, int(cfg.train.epochs * (len(prompts) // p.rollout_batch_size)))
    scheduler = transformers.get_scheduler(cfg.train.lr_scheduler, optimizer, num_training_steps=total,
                                           num_warmup_steps=math.ceil(cfg.train.warmup_ratio * total))
    model = accelerator.prepare_model(ppo_rollout.PolicyAndValue(policy, value_model))
    for frozen in (reference, reward):
        if isinstance(frozen, torch.nn.Module):
            frozen.to(accelerator.device)
    stream = ppo_rollout.PromptStream(prompts, p.rollout_batch_size, rank=accelerator.process_index, world=world,
                                      generator=None if p.trl_parity else torch.Generator().manual_seed(cfg.train.seed))
    kl_controller = (rl.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.kl_controller == "adaptive"
                     else rl.FixedKLController(p.kl_coef))
    n_trainable, n_total = models.count_parameters(model)
    log.info("ppo: %d prompts, %d updates of %d; %s of %s parameters trainable (policy%s + value model); "
             "reference: %s; reward: %s", len(prompts), total, p.rollout_batch_size, f"{n_trainable:,}",
             f"{n_total:,}", " LoRA" if cfg.model.lora.enabled else "",
             "adapters disabled" if reference is None else "frozen copy",
             cfg.reward_model.function or cfg.reward_model.name_or_path)
    return PPOBuild(accelerator, tokenizer, policy, value_model, model, reference, reward, optimizer, scheduler,
                    stream, ppo_rollout.Sampler.create(p, tokenizer), kl_controller, total, stage_data)


def _load_models(cfg: PPOConfig, tokenizer, checkpoint: Path | None) -> tuple[Any, Any, Any, Any]:
    """Policy and value model (trainable, from `checkpoint` when resuming), reference and reward model (frozen;
    reference None with LoRA, reward None with a reward function). Dropout off in all of them."""
    lora, pad = cfg.model.lora.enabled, tokenizer.pad_token_id
    policy_path = models.resolve_path(cfg.model.name_or_path)
    policy = models.load_causal_lm(cfg.model, str(checkpoint / "policy") if checkpoint and not lora else policy_path)
    if lora:
        import peft

        policy = (peft.PeftModel.from_pretrained(policy, checkpoint / "policy", is_trainable=True) if checkpoint
                  else peft.get_peft_model(policy, models.peft_config(cfg.model.lora)))
    value_source = cfg.value_model.name_or_path or cfg.reward_model.name_or_path or cfg.model.name_or_path
    value_cfg, value_path = _side(cfg, value_source)
    value_model = models.load_sequence_classifier(value_cfg, str(checkpoint / "value_model") if checkpoint
                                                  else value_path, pad_token_id=pad)
    for model in (policy, value_model):
        models.disable_dropout(model)
        model.train()
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = reward = None
    if cfg.reference is not None or not lora:  # the starting policy, loaded again from its checkpoint
        reference = _frozen(models.load_causal_lm(*_side(cfg, cfg.reference or cfg.model.name_or_path)))
    if cfg.reward_model.name_or_path is not None:
        reward = _frozen(models.load_sequence_classifier(*_side(cfg, cfg.reward_model.name_or_path), pad_token_id=pad))
    for name in {cfg.reference, cfg.reward_model.name_or_path, value_source} - {None, cfg.model.name_or_path}:
        _check_same_vocabulary(cfg, tokenizer, name)
    return policy, value_model, reference, reward


def run(cfg: PPOConfig) -> StageResult:
    """The PPO loop: rollout, rewards and advantages, PPO epochs, metrics, checkpoints; then the final save."""
    import json

    import transformers
    from tqdm.auto import tqdm

    from align import health, plots

    out, p = Path(cfg.train.output_dir), cfg.ppo
    resume_from = runner.prepare_output_dir(cfg.train)
    is_main = runner.is_main_process()
    if is_main:
        config.save_config(cfg, out)
    tracker = Tracker(cfg.tracking, out, stage="ppo", run_config=config.to_dict(cfg), is_main=is_main)
    try:
        b = build(cfg, tracker, resume_from)
        acc = b.accelerator
        transformers.set_seed(cfg.train.seed + acc.process_index * 100003)  # each process samples differently
        start = ppo_outputs.load_checkpoint(b, Path(resume_from)) if resume_from else 0
        bar = tqdm(total=b.total_updates, initial=start, desc="ppo", unit="update", dynamic_ncols=True,
                   disable=not is_main)
        started, first, metrics, last = time.perf_counter(), {}, {}, start
        reporter = health.HealthReporter(health.HealthMonitor(cfg.tracking.health, max_steps=b.total_updates), tracker)
        for update in range(start + 1, b.total_updates + 1):
            t0 = time.perf_counter()
            queries = ppo_rollout.left_pad(b.prompts.next(), b.sampler.pad_id, acc.device)
            with torch.no_grad():
                exp, timing = ppo_rollout.rollout(b.sampler, b.policy, b.reference, b.value_model, b.reward,
                                                  b.tokenizer, queries)
                shaped = ppo_update.shape_rewards(p, exp, b.kl_controller.coef, acc.reduce)
            t1 = time.perf_counter()
            stats = ppo_update.optimise(cfg, b, exp, shaped)
            timing.update(train=time.perf_counter() - t1, update=time.perf_counter() - t0)
            metrics, last = ppo_update.update_metrics(cfg, b, exp, shaped, stats, timing, update), update
            first = first or metrics
            # Every update is checked, logged or not. Metrics are reduced over processes, so all of them stop
            # together on a NaN loss, before this update's broken weights can reach a checkpoint.
            reporter.observe(update, metrics)
            if update % cfg.train.logging_steps == 0 or reporter.stopped_on_fatal:
                tracker.log(metrics, step=update)
            if reporter.stopped_on_fatal:
                break
            b.kl_controller.update(metrics["objective/kl"], p.rollout_batch_size)
            b.scheduler.step()
            if p.sample_every and update % p.sample_every == 0:
                ppo_outputs.write_samples(b, tracker, exp, shaped.scores, update, out)
            bar.update(1)
            bar.set_postfix_str(f"score {metrics['objective/scores']:.3f} | kl {metrics['objective/kl']:.3f} | "
                                f"{timing['update']:.2f} s/update")
            if update % cfg.train.save_steps == 0:
                ppo_outputs.save_checkpoint(b, out, update, keep=cfg.train.save_total_limit)
        bar.close()
        runtime = time.perf_counter() - started
        summary = {"steps": last, "train_runtime_s": round(runtime, 2),
                   "s_per_update": round(runtime / max(1, last - start), 3)}
        if metrics:  # none when resuming a run that had already finished its updates
            summary.update({"objective/scores_first": first["objective/scores"],
                            **{k: metrics[k] for k in ("objective/scores", "objective/kl", "objective/rlhf_reward")}})
        fatal = reporter.fatal
        stopped = {"stopped": f"stopped on the fatal health alert {fatal.name} at update {fatal.step}"} if fatal else {}
        if is_main:
            plots.plot_finished_run(out)
            if fatal:
                record = {"stage": "ppo", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": summary,
                          "data": b.stage_data.report, "dropped": dict(b.stage_data.dropped),
                          "stopping": runner.stopped_by(fatal, out)}
                log.warning("ppo stopped at update %d on %s; the final model was not saved, the last checkpoint "
                            "(%s) holds the latest good weights", last, fatal.name,
                            record["stopping"]["last_checkpoint"])
            else:
                ppo_outputs.save_final(b, out, summary, merged=cfg.save_merged)
                tracker.log_model(out)
                record = json.loads((out / runner.SUMMARY).read_text(encoding="utf-8"))
            record["health"] = reporter.summary()  # save_final knows nothing of health: summary.json gets it here
            (out / runner.SUMMARY).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        acc.wait_for_everyone()
        tracker.summary(summary)
    finally:
        notes = tracker.finish()
    return StageResult(stage="ppo", output_dir=out, metrics=summary, notes={**notes, **stopped})


def _side(cfg: PPOConfig, name_or_path: str) -> tuple[ModelConfig, str]:
    """Config and path of a reference, reward or value model: the policy's dtype and attention, no LoRA."""
    revision = cfg.model.revision if name_or_path == cfg.model.name_or_path else None
    side = replace(cfg.model, name_or_path=name_or_path, revision=revision, chat_template=None,
                   gradient_checkpointing=False, lora=replace(cfg.model.lora, enabled=False, quantize_4bit=False))
    return side, models.resolve_path(name_or_path)


def _frozen(model):
    models.disable_dropout(model)
    return model.requires_grad_(False).eval()


def _check_same_vocabulary(cfg: PPOConfig, tokenizer, name_or_path: str) -> None:
    """Reward, value and reference models read the policy's token ids directly, so they must share its vocabulary."""
    other = models.load_tokenizer(*_side(cfg, name_or_path))
    if other.get_vocab() != tokenizer.get_vocab():
        raise ModelError(f"{name_or_path!r} has a different vocabulary from the policy {cfg.model.name_or_path!r}; "
                         "PPO feeds the policy's token ids to the reward, value and reference models unchanged")
