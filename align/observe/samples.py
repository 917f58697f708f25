"""Replies sampled while a TRL stage trains: before training and every N optimizer steps, written to
`completions.jsonl` (and a W&B table), their length / EOS / repetition statistics logged and watched by the health
rules."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from align import generation
from align.errors import ConfigError
from align.rundir import COMPLETIONS_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback

    from align.data import StageData
    from align.observe.health import HealthReporter
    from align.observe.tracking import Tracker

log = logging.getLogger(__name__)


def completion_prompts(stage_data: StageData, count: int) -> list[list[dict]]:
    """The prompts of the first `count` eval rows (else train rows): a pair's prompt, an sft conversation without
    its final reply. Rows with tool schemas are left out (sampling renders no tools)."""
    from data_formats.kinds import to_prompt

    rows = [row for row in stage_data.eval or stage_data.train if not row.get("tools")]
    if not rows:
        raise ConfigError("tracking.completions_every: every row has tools, and sampling renders none; set it to 0")
    return [to_prompt(row)["prompt"] for row in rows[:count]]


def completions_callback(prompts: list[list[dict]], every_n_steps: int, *, tokenizer: PreTrainedTokenizerBase,
                         tracker: Tracker, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                         batch_size: int = 8, health: HealthReporter | None = None) -> TrainerCallback:
    """A transformers TrainerCallback that samples replies to `prompts` before training and every N optimizer steps.

    On the main process only: it writes `completions.jsonl` in the tracker's output dir (plus the W&B table) and
    logs `completions/length_mean`, `completions/eos_rate` and `completions/repetition_rate` to the tracker, and
    passes them to `health` (a `HealthReporter`, e.g. the health callback) when given, so their rules see them.
    Sampling uses the unwrapped model, so it suits single-process and DDP runs, not sharded (FSDP / ZeRO-3) weights.
    """
    # Defined here so that importing this module does not import transformers (config loading stays light).
    from transformers import TrainerCallback

    if every_n_steps < 1:
        raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
    if not prompts:
        raise ValueError("completions_callback needs at least one prompt")

    class CompletionsCallback(TrainerCallback):
        def _sample(self, state, model) -> None:
            generated = generation.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                            temperature=temperature, seed=seed, batch_size=batch_size)
            rows = generation.completion_rows(prompts, generated)
            tracker.log_table("completions", COMPLETIONS_FILE, rows, state.global_step)
            stats = {f"completions/{name}": value for name, value in generation.completion_stats(generated).items()}
            tracker.log(stats, step=state.global_step)
            if health is not None:
                health.observe(state.global_step, stats)
            log.info("step %d: sampled %d completions (mean length %.1f tokens, EOS rate %.2f)", state.global_step,
                     len(rows), stats["completions/length_mean"], stats["completions/eos_rate"])

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                self._sample(state, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and state.global_step % every_n_steps == 0:
                self._sample(state, model)

    return CompletionsCallback()
