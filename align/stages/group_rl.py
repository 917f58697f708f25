"""What the GRPO and RLOO stages share: a group of completions sampled per prompt, scored by rules and reward models,
and TRL's group-relative policy-gradient update (trl.GRPOTrainer, trl.RLOOTrainer); no value model.

Prompts: any prompt source `data_formats` reads (prompt rows, or the prompts of preference and sft rows). Rewards
are named as the PPO stage names its reward: a rule `module:function` / `path/to/file.py:function`, or a reward
model dir; several at once, summed with their weights. A rule sees what it sees under PPO and `align eval --judge
rule:...` (the prompt rendered with the chat template, special tokens removed, and the reply's text), and a reward
model scores prompt + reply at the reply's EOS token (align.eval.judges), so a reward stage's output scores here
exactly as there. Each reward is logged on its own as rewards/<name>/mean and rewards/<name>/std (TRL's keys), the
name being the rule's function name or the reward model dir's name.

The KL reference (beta > 0) is the starting policy: a frozen copy, or with LoRA the policy with its adapter
disabled. TRL loads its copy again from the checkpoint path; for a LoRA adapter dir (merged here) that path is the
bare base model, so the stage gives that copy the merged weights.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align import data, generation, models, reward_functions
from align.errors import ConfigError
from align.eval import judges
from align.observe import health
from align.sections import DataConfig, ModelConfig, RewardSource, TrackingConfig, TrainConfig
from align.stages import trainer as trainer_stage

if TYPE_CHECKING:
    from align.observe.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class RewardSpec(RewardSource):
    weight: float = 1.0
    """Its weight in the weighted sum of rewards the advantages are computed from."""

    @property
    def label(self) -> str:
        """The function's name, or the reward model dir's name."""
        return self.function.rsplit(":", 1)[1] if self.function else Path(self.name_or_path.rstrip("/")).name


@dataclass(kw_only=True)
class GroupRLConfig:
    stage: str
    """Names the stage this file configures, so `align validate` and the other stages can tell."""
    model: ModelConfig
    """The policy to optimise (usually the latest sft / dpo stage's output; a LoRA adapter dir is merged first), and
    the frozen KL reference: with model.lora.enabled the policy with its adapter disabled, else a frozen copy."""
    rewards: list[RewardSpec]
    """One or more rewards (each a reward model or a rule, with a weight); in a pipeline, default: the last reward
    stage's model."""
    data: DataConfig
    """Prompts: `prompt` rows, or the prompts of any preference / sft source. A prompt over train.max_length -
    max_completion_length tokens is dropped and counted (TRL takes whole conversations, so it cannot be cut)."""
    train: TrainConfig
    """batch_size counts completions per process and step: batch_size x grad_accum must hold whole groups of
    num_generations. max_steps counts optimizer steps."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    num_generations: int = 8
    """Completions sampled per prompt; the group each reward is compared within."""
    max_completion_length: int = 256
    """Maximum new tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature (also applied to the log-probs of the update)."""
    beta: float = 0.0
    """KL coefficient towards the reference (0: no reference model is loaded)."""
    epsilon: float = 0.2
    """Policy ratio clip range."""
    save_merged: bool = False
    """With LoRA: also save the policy merged into its base weights under <output_dir>/merged."""
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra fields of TRL's config class we do not expose (e.g. use_vllm), checked against that class; for experts."""

    def group_problems(self, trl_config: str, owned: dict[str, str]) -> list[str]:
        """The problems GRPO and RLOO configs share; `owned`: the stage's own keys that set TRL fields."""
        problems = [] if self.rewards else ["rewards: name at least one reward (a function or a reward model dir)"]
        if self.num_generations < 2:
            problems.append(f"num_generations: must be >= 2 (a group needs two completions), got "
                            f"{self.num_generations}")
        for name in ("max_completion_length", "temperature", "epsilon"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.beta < 0:
            problems.append(f"beta: must be >= 0, got {self.beta}")
        if self.max_completion_length >= self.train.max_length:
            problems.append(f"train.max_length: must exceed max_completion_length={self.max_completion_length} "
                            "(it bounds prompt + completion)")
        per_step = self.train.batch_size * self.train.grad_accum
        if self.num_generations >= 2 and per_step % self.num_generations:
            problems.append(f"train.batch_size: counts completions; batch_size x grad_accum = {per_step} must be a "
                            f"multiple of num_generations={self.num_generations} (whole groups per step)")
        has_eval = self.data.eval or self.data.eval_fraction
        if has_eval and self.num_generations >= 2 and self.train.batch_size % self.num_generations:
            problems.append(f"train.batch_size: evaluation scores whole groups per batch, so batch_size="
                            f"{self.train.batch_size} must be a multiple of num_generations={self.num_generations}")
        if self.save_merged and not self.model.lora.enabled:
            problems.append("save_merged: only applies with model.lora.enabled=true")
        own = ("num_generations", "max_completion_length", "temperature", "beta", "epsilon")
        problems += trainer_stage.check_trainer_overrides(
            self.trainer_overrides, trl_config,
            {**trainer_stage.OWNED_ARGUMENTS, **{key: key for key in own}, "reward_weights": "rewards[].weight",
             "disable_dropout": "(always on: the update's log-probs must match the sampling's)", **owned})
        return problems


def build(cfg: GroupRLConfig, tracker: Tracker, trl_config: str, trl_trainer: str,
          arguments: dict[str, Any]) -> trainer_stage.TrainerBuild:
    """Load tokenizer, rewards, prompts and policy and return a ready `trl.<trl_trainer>`; `arguments`: the stage's
    own fields of `trl.<trl_config>`. Trains nothing."""
    import datasets
    import trl

    models.configure_threads(cfg.train.num_threads)
    model_path = models.resolve_path(cfg.model.name_or_path)
    tokenizer = models.load_tokenizer(cfg.model, model_path)
    labels = reward_labels(cfg.rewards)
    reward_judges = [_judge(spec, i, tokenizer, cfg.train.batch_size, cfg.train.max_length)
                     for i, spec in enumerate(cfg.rewards)]

    stage_data = data.load(cfg.data, "prompt")
    budget = cfg.train.max_length - cfg.max_completion_length
    train_rows, eval_rows = (_prompts_within(getattr(stage_data, split), tokenizer, budget, stage_data.dropped, split)
                             for split in ("train", "eval"))
    if not train_rows:
        raise ConfigError(f"data.train: no usable prompts after formatting and length limits "
                          f"({dict(stage_data.dropped)})")

    model = models.load_causal_lm(cfg.model, model_path)
    probes = _probe_reward_models(cfg, reward_judges, labels, model, tokenizer, train_rows)
    reward_fns = [_reward_function(judge, label) for judge, label in zip(reward_judges, labels, strict=True)]
    has_eval = bool(eval_rows)
    stage_callbacks = trainer_stage.trainer_callbacks(cfg, model, tracker, tokenizer=tokenizer, stage_data=stage_data)
    args = trainer_stage.trl_arguments(
        getattr(trl, trl_config), cfg.trainer_overrides,
        **trainer_stage.training_arguments(cfg.train, cfg.model, has_eval=has_eval, default_metric="eval_reward"),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        reward_weights=[spec.weight for spec in cfg.rewards],
        disable_dropout=True,
        **arguments,
    )
    trainer = getattr(trl, trl_trainer)(
        model=model,
        reward_funcs=reward_fns,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=models.peft_config(cfg.model.lora, model),
        callbacks=stage_callbacks.callbacks,
    )
    reference = _reference(cfg, trainer, model_path)
    # First, so that the tracker and the health rules see the statistic in the same log record.
    trainer.callback_handler.callbacks.insert(0, _sample_statistics(trainer, tokenizer))
    rewards = [{"name": label, "weight": spec.weight, "source": spec.function or spec.name_or_path}
               for spec, label in zip(cfg.rewards, labels, strict=True)]
    trainable, total = models.count_parameters(trainer.model)
    log.info("%s: %s, %d train / %d eval prompts, %d completions each; %s of %s parameters trainable; reference: %s; "
             "rewards: %s", cfg.stage, cfg.model.name_or_path, len(train_rows), len(eval_rows), cfg.num_generations,
             f"{trainable:,}", f"{total:,}", reference, ", ".join(f"{r['name']} x {r['weight']:g}" for r in rewards))
    return trainer_stage.TrainerBuild(trainer=trainer, tokenizer=tokenizer, stage_data=stage_data,
                                      callbacks=stage_callbacks,
                                      summary={"reference": reference, "rewards": rewards,
                                               **({"probe": probes} if probes else {})})


def reward_labels(specs: list[RewardSpec]) -> list[str]:
    """Each reward's name in the logs: its label, with _2, _3, ... after a name already taken."""
    seen: Counter = Counter()
    labels = []
    for spec in specs:
        seen[spec.label] += 1
        labels.append(spec.label if seen[spec.label] == 1 else f"{spec.label}_{seen[spec.label]}")
    return labels


def _judge(spec: RewardSpec, index: int, tokenizer, batch_size: int,
           max_length: int) -> judges.RuleJudge | judges.RewardModelJudge:
    """The rule or reward model a reward spec names, as align eval's judges score (align.eval.judges); a reward
    model reads at most `max_length` tokens, as PPO's does (only the probe's padded variants can be longer)."""
    if spec.function:
        option = f"rewards[{index}].function"
        return judges.RuleJudge(reward_functions.load(spec.function, option), tokenizer, option=option)
    return judges.RewardModelJudge.load(spec.name_or_path, models.device(), batch_size, max_length)


def _reward_function(judge: judges.RuleJudge | judges.RewardModelJudge, label: str):
    """A TRL reward function (keyword arguments prompts and completions, conversational) around a judge."""

    def reward(prompts: list[list[dict]], completions: list[list[dict]], **_: Any) -> list[float]:
        return judge.score(prompts, completions)

    reward.__name__ = label  # TRL names the reward's metrics after it
    return reward


def _probe_reward_models(cfg: GroupRLConfig, reward_judges: list, labels: list[str], policy, tokenizer,
                         prompts: list[dict]) -> dict[str, dict[str, Any]]:
    """The exploit probe (align.probe.gate) of each reward model whose spec keeps `probe` on, on the starting
    policy's greedy replies, by label; written to probe.json in the output dir, or probe-<label>/ with several. A
    resumed run reports the probes its first start wrote."""
    from align.probe import gate, results

    probed = [(i, spec, judge, label) for i, (spec, judge, label) in
              enumerate(zip(cfg.rewards, reward_judges, labels, strict=True))
              if spec.probe and isinstance(judge, judges.RewardModelJudge)]
    out = Path(cfg.train.output_dir)
    found: dict[str, dict[str, Any]] = {}
    for i, spec, judge, label in probed:
        where = out if len(probed) == 1 else out / f"probe-{label}"
        written = where / results.PROBE_FILE
        if cfg.train.resume and written.is_file():
            found[label] = json.loads(written.read_text(encoding="utf-8"))
            continue
        found[label] = gate.check_reward_model(
            judge, policy, tokenizer, [row["prompt"] for row in prompts[:spec.probe_prompts]],
            name=spec.name_or_path, threshold=spec.probe_threshold, max_new_tokens=cfg.max_completion_length,
            out=where, batch_size=cfg.train.batch_size, seed=cfg.train.seed, key=f"rewards[{i}]",
            override=f"probe_threshold: 1.0 under rewards[{i}] (record the probe, never refuse) or probe: false",
        ).to_dict()
    return found


def _prompts_within(rows: list[dict], tokenizer, budget: int, dropped: Counter, split: str) -> list[dict]:
    """{"prompt": ...} of the rows whose templated prompt fits `budget` tokens; the others dropped and counted."""

    def token_ids(row: dict) -> data.Encoding:
        return {"input_ids": generation.prompt_ids(tokenizer, row["prompt"])}

    limit = data.LengthLimit(budget, drop_long=True, too_long=f"prompt over train.max_length - max_completion_length "
                                                              f"= {budget} tokens")
    return [{"prompt": row["prompt"]} for row, _ in data.fit_to_length(rows, token_ids, limit, dropped=dropped,
                                                                       split=split)]


def _reference(cfg: GroupRLConfig, trainer, model_path: str) -> str:
    """What the KL reference is; for a LoRA adapter dir, replaces TRL's copy of the bare base with the merged one."""
    starting = f"the starting policy {cfg.model.name_or_path}"
    if cfg.beta == 0:
        return "none (beta=0)"
    if cfg.model.lora.enabled:
        return f"{starting}: the policy with its LoRA adapter disabled"
    if models.adapter_base(model_path) is not None:
        # Not trained yet, the policy holds the merged weights; TRL's reference (the base) takes them and keeps the
        # fused log-prob head TRL put on it.
        policy = trainer.accelerator.unwrap_model(trainer.model)
        trainer.accelerator.unwrap_model(trainer.ref_model).load_state_dict(policy.state_dict())
        return f"frozen copy of {starting} (merged)"
    return f"frozen copy of {starting}"


def _sample_statistics(trainer, tokenizer):
    """A TrainerCallback that adds to each training log the repetition rate of the latest sampled completions
    (TRL logs their lengths itself), for the health rules."""
    from transformers import TrainerCallback

    class SampleStatistics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            # TRL keeps the latest generation batch's completions in `_logs` (trl 1.16) for its own tables.
            completions = list(trainer._logs["completion"])
            if not logs or "reward" not in logs or not completions:
                return
            texts = ["\n".join(message["content"] for message in reply) for reply in completions]
            replies = tokenizer(texts, add_special_tokens=False)["input_ids"]
            logs[health.TRAINING_REPETITION_KEY] = sum(map(generation.has_repeated_ngram, replies)) / len(replies)

    return SampleStatistics()
