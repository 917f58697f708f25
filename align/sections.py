"""Config sections shared by every stage: model, data, train, tracking.

A field's help text is the docstring under it. Cross-field rules live in `check()`, which returns every problem
as `<field>: <what is wrong>` so the loader can report them all at once with full dotted paths.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from align import reward_functions

ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
"""transformers.SchedulerType's names, listed here so the config check stays torch-free (a test keeps them equal)."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    rank: int = 16
    """LoRA rank r."""
    alpha: int = 32
    """LoRA scaling alpha (the update is scaled by alpha / rank)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names or suffixes to adapt; ["all-linear"] adapts every linear layer except the output head."""
    quantize_4bit: bool = False
    """QLoRA: load the frozen base in 4-bit NF4 (needs CUDA and bitsandbytes)."""

    def check(self) -> list[str]:
        problems = []
        if self.rank <= 0:
            problems.append(f"rank: must be > 0, got {self.rank}")
        if self.alpha <= 0:
            problems.append(f"alpha: must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            problems.append("target_modules: must name at least one module, e.g. [all-linear]")
        if self.quantize_4bit and not self.enabled:
            problems.append("quantize_4bit: QLoRA needs lora.enabled=true")
        return problems


@dataclass
class FreezeConfig:
    embeddings: bool = False
    """Freeze the token (and position) embeddings; with tied embeddings this freezes the output head too."""
    first_layers: int = 0
    """Freeze the first N transformer blocks."""
    modules: list[str] = field(default_factory=list)
    """Also freeze parameters whose names match these glob patterns (e.g. "*.mlp.*"); never thawed."""
    unfreeze_every_steps: int = 0
    """Gradual unfreezing: thaw one more block every K optimizer steps, highest first, then the embeddings."""
    unfreeze_at_epochs: list[float] = field(default_factory=list)
    """Gradual unfreezing by epoch instead: thaw one more group at each of these epochs."""

    def active(self) -> bool:
        return bool(self.embeddings or self.first_layers or self.modules)

    def check(self) -> list[str]:
        problems = []
        if self.first_layers < 0 or self.unfreeze_every_steps < 0:
            problems.append("first_layers and unfreeze_every_steps: must be >= 0")
        if self.unfreeze_every_steps and self.unfreeze_at_epochs:
            problems.append("unfreeze_every_steps: set either unfreeze_every_steps or unfreeze_at_epochs, not both")
        if (self.unfreeze_every_steps or self.unfreeze_at_epochs) and not (self.embeddings or self.first_layers):
            problems.append("unfreeze_every_steps: a schedule needs frozen blocks or embeddings to thaw")
        return problems


@dataclass
class ModelConfig:
    name_or_path: str
    """A registered alias (`align models list`), a local directory, or a hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when name_or_path is a hub id."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Training dtype. auto: bf16 on GPUs that support it, fp32 on CPU (bf16 is emulated and slow on most CPUs)."""
    attn_implementation: str | None = None
    """Attention kernel: eager, sdpa, flash_attention_2, ... (None: the transformers default)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint to run. Off unless you trust the source."""
    chat_template: str | None = None
    """A Jinja chat template (inline text or a path to a .jinja file) to use instead of the tokenizer's."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    """Freeze embeddings / the first blocks of a full fine-tune, optionally thawing them gradually."""

    def check(self) -> list[str]:
        problems = []
        if self.freeze.active() and self.lora.enabled:
            problems.append(
                "freeze: LoRA already keeps every base weight frozen; freezing applies to full fine-tuning only. "
                "Use lora.target_modules to choose what adapts"
            )
        if not self.name_or_path.strip():
            problems.append("name_or_path: must not be empty")
        if self.attn_implementation is not None and self.attn_implementation not in ATTENTION:
            problems.append(
                f"attn_implementation: must be one of {', '.join(ATTENTION)} or null, got {self.attn_implementation!r}"
            )
        return problems


@dataclass
class SourceConfig:
    path: str
    """A .json/.jsonl/.parquet/.csv file or a datasets hub id."""
    format: str = "auto"
    """Source format (see `align data inspect`); auto detects it from the rows."""
    columns: dict[str, str] = field(default_factory=dict)
    """Map canonical field names to this file's column names, e.g. {prompt: question}."""
    weight: float = 1.0
    """Mixing weight: rows taken = weight x rows in the source (1.0 = every row once)."""
    split: str | None = None
    """Split of a hub dataset (e.g. train)."""

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    def check(self) -> list[str]:
        return [f"weight: must be > 0, got {self.weight}"] if self.weight <= 0 else []


@dataclass
class DataConfig:
    train: list[SourceConfig]
    """Training sources; a plain path is shorthand for {path: ...}."""
    eval: list[SourceConfig] = field(default_factory=list)
    """Held-out sources for evaluation; if empty, eval_fraction of train is held out."""
    eval_fraction: float = 0.0
    """Fraction of the training rows held out for evaluation (seeded) when no eval sources are given."""
    on_error: Literal["raise", "skip"] = "raise"
    """raise: stop at malformed rows, naming file, row and reason. skip: drop them and count them in the report."""
    dedup: bool = False
    """Drop exact duplicate rows (counted in the report)."""
    drop_long: bool = False
    """Drop rows longer than train.max_length tokens (counted) instead of truncating them."""
    seed: int = 0
    """Seed for the train/eval split and weighted mixing."""

    def check(self) -> list[str]:
        problems = []
        if not self.train:
            problems.append("train: needs at least one source")
        if not 0.0 <= self.eval_fraction < 1.0:
            problems.append(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.eval and self.eval_fraction:
            problems.append("eval_fraction: set either eval sources or eval_fraction, not both")
        return problems


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    metric: str | None = None
    """Eval metric to watch (default: eval_loss for sft, eval_rewards/accuracies for dpo, eval_accuracy for reward)."""
    mode: Literal["auto", "min", "max"] = "auto"
    """auto: min for metrics containing 'loss', max otherwise."""
    patience: int = 3
    """Evaluations without improvement before stopping."""
    threshold: float = 0.0
    """Minimum change that counts as an improvement."""

    def check(self) -> list[str]:
        return [f"patience: must be >= 1, got {self.patience}"] if self.patience < 1 else []


@dataclass
class TrainConfig:
    output_dir: str
    """Where the model, checkpoints, config.yaml, metrics.jsonl and summary.json go."""
    epochs: float = 1.0
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps to run; -1 runs `epochs` epochs."""
    batch_size: int = 4
    """Examples per device per micro-batch."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    learning_rate: float = 2e-5
    lr_scheduler: str = "cosine"
    """Any transformers scheduler name (LR_SCHEDULERS): linear, cosine, constant, constant_with_warmup, ..."""
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 1024
    """Maximum tokens per example (prompt + reply)."""
    seed: int = 42
    logging_steps: int = 1
    eval_steps: int = 0
    """Evaluate every N optimizer steps (0: only at the end, when there is eval data)."""
    save_steps: int = 100
    """Write a checkpoint every N optimizer steps."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints (the newest)."""
    resume: bool = False
    """Continue from the last checkpoint in output_dir."""
    overwrite: bool = False
    """Allow starting over in an output_dir that already holds checkpoints or a finished run."""
    num_threads: int = 0
    """CPU threads for torch (0: one per core this process may use)."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """Stop when the eval metric stops improving; the best checkpoint becomes the final model."""

    def check(self) -> list[str]:
        problems = []
        for name in ("batch_size", "grad_accum", "max_length", "logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.max_steps != -1:
            problems.append(f"max_steps: must be > 0 or -1, got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:
            problems.append(f"epochs: must be > 0 when max_steps is -1, got {self.epochs}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate: must be > 0, got {self.learning_rate}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            close = difflib.get_close_matches(self.lr_scheduler, LR_SCHEDULERS, n=1)
            hint = f"Did you mean '{close[0]}'?" if close else f"Schedulers: {', '.join(LR_SCHEDULERS)}."
            problems.append(f"lr_scheduler: unknown scheduler {self.lr_scheduler!r}. {hint}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_steps < 0 or self.num_threads < 0:
            problems.append("eval_steps and num_threads: must be >= 0")
        if self.early_stopping.enabled:
            if not self.eval_steps:
                problems.append("early_stopping.enabled: needs periodic evaluation; set train.eval_steps > 0")
            elif self.save_steps % self.eval_steps:
                problems.append(
                    f"save_steps: must be a multiple of eval_steps ({self.eval_steps}) with early stopping, so the "
                    f"best evaluated step has a checkpoint; got {self.save_steps}"
                )
        if self.resume and self.overwrite:
            problems.append("resume: resume=true and overwrite=true contradict each other; choose one")
        return problems


@dataclass
class HealthConfig:
    enabled: bool = True
    """Watch the logged metrics for the failure signatures below and raise alerts (log, W&B, summary)."""
    window: int = 3
    """Logs averaged into a metric's start value and into its current value."""
    chosen_logps_drop: float = 0.5
    """DPO: alert when logps/chosen falls below its start by more than this fraction of |start| while
    rewards/margins rises (both replies are being pushed down, the chosen one too)."""
    early_fraction: float = 0.2
    """DPO: alert when rewards/accuracies stays at 1.0 for `window` logs within this first fraction of the steps."""
    length_growth: float = 2.0
    """PPO / sampled completions: alert when the mean response length grows beyond this many times its start."""
    eos_rate_drop: float = 0.5
    """Sampled completions / PPO: alert when the EOS rate falls below (1 - this) times its start."""
    repetition_rise: float = 0.15
    """Sampled completions / PPO: alert when the fraction of replies that repeat a 4-gram rises more than this
    above its start (an absolute rise: 0.15 is e.g. 5% -> 20%)."""
    kl_max: float = 20.0
    """PPO: alert when objective/kl (nats per response) exceeds this."""
    kl_jump: float = 5.0
    """PPO: alert when one log's objective/kl exceeds the mean of the `window` logs before it by this much."""
    token_kl_max: float = 1.0
    """GRPO / RLOO: alert when kl (the mean per-token KL to the reference) exceeds this, or one log's kl exceeds
    the mean of the `window` logs before it by this much."""
    reward_plateau_logs: int = 20
    """GRPO / RLOO: after this many logs, alert when the mean reward of the last `window` logs is not above that of
    the first `window` by more than reward_plateau_gain x the starting reward_std."""
    reward_plateau_gain: float = 0.1
    """GRPO / RLOO: the smallest rise of the reward, in units of its starting within-batch spread, that counts as
    progress."""

    def check(self) -> list[str]:
        problems = []
        if self.window < 1:
            problems.append(f"window: must be >= 1, got {self.window}")
        for name in ("chosen_logps_drop", "early_fraction", "eos_rate_drop", "repetition_rise"):
            if not 0.0 < getattr(self, name) <= 1.0:
                problems.append(f"{name}: must be in (0, 1], got {getattr(self, name)}")
        if self.length_growth <= 1.0:
            problems.append(f"length_growth: must be > 1, got {self.length_growth}")
        if self.kl_max <= 0 or self.kl_jump <= 0 or self.token_kl_max <= 0:
            problems.append("kl_max, kl_jump and token_kl_max: must be > 0")
        if self.reward_plateau_logs < 1 or self.reward_plateau_gain < 0:
            problems.append("reward_plateau_logs: must be >= 1, and reward_plateau_gain >= 0")
        return problems


@dataclass
class TrackingConfig:
    backend: Literal["none", "jsonl", "wandb"] = "jsonl"
    """jsonl: metrics.jsonl only (always written). wandb: also Weights & Biases. none: metrics.jsonl only, quietly."""
    project: str = "align"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user)."""
    name: str | None = None
    """Run name (default: <output dir name>)."""
    group: str | None = None
    """W&B group, e.g. one per pipeline run."""
    tags: list[str] = field(default_factory=list)
    mode: Literal["auto", "online", "offline"] = "auto"
    """auto: online when WANDB_API_KEY is set or you are logged in, otherwise offline (sync later with `wandb sync`)."""
    upload_artifacts: bool = False
    """W&B: upload the final model's files into its "model" artifact. false: the artifact only references them by
    file:// URI and checksum (inputs are always referenced, never uploaded)."""
    health: HealthConfig = field(default_factory=HealthConfig)
    """Alerts on known failure signatures in the logged metrics (NaN loss stops training); see docs/evaluation.md."""
    completions_every: int = 0
    """SFT and DPO: sample replies to a few held-out prompts before training and every N optimizer steps, into
    completions.jsonl (and a W&B table); 0: off."""
    completions_prompts: int = 4
    """How many prompts: the first rows of the eval split, else of the train split."""
    completions_max_new_tokens: int = 64
    """Length limit of each sampled reply (greedy decoding)."""

    def check(self) -> list[str]:
        problems = []
        if self.completions_every < 0:
            problems.append(f"completions_every: must be >= 0 (0: off), got {self.completions_every}")
        for name in ("completions_prompts", "completions_max_new_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        return problems


@dataclass
class RewardSource:
    """Where a reward comes from (the RL stages' reward sections): a trained reward model or a rule, exactly one."""

    name_or_path: str | None = None
    """A trained reward model (the reward stage's output, a local dir or hub id), read at the reply's EOS token."""
    function: str | None = None
    """A rule instead: `module:function` or `path/to/file.py:function`, called on the decoded texts as
    fn(prompts: list[str], completions: list[str]) -> list[float]."""

    probe: bool = True
    """With a reward model: before training, probe it (align.probe): degrade the starting policy's greedy replies to
    the first probe_prompts prompts 8 ways (loops, list spam, padding, truncation, ...) and refuse to start when a
    degraded reply outscores the original in more than probe_threshold of cases. Writes probe.json."""
    probe_prompts: int = 16
    """Prompts the probe uses."""
    probe_threshold: float = 0.5
    """The largest share of cases a degraded reply may win; 1.0 records the probe without ever refusing."""

    def check(self) -> list[str]:
        if not 0 <= self.probe_threshold <= 1:
            return [f"probe_threshold: must be within [0, 1], got {self.probe_threshold}"]
        if self.probe_prompts < 1:
            return [f"probe_prompts: must be >= 1, got {self.probe_prompts}"]
        if (self.name_or_path is None) == (self.function is None):
            return ["name_or_path: set exactly one of name_or_path (a reward model) and function (a rule)"]
        problem = self.function and reward_functions.spec_problem(self.function)
        return [f"function: {problem}"] if problem else []
