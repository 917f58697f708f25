"""A training progress bar with loss, tokens/s and ETA, replacing the trainer's default per-log dict printing."""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback


class ProgressBar(TrainerCallback):
    """tqdm over optimizer steps on the main process; shows the latest loss and input tokens per second."""

    def __init__(self, stage: str):
        self.stage = stage
        self.bar = None
        self.start = 0.0
        self.start_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.stage, unit="step",
                        dynamic_ncols=True)
        self.start = time.perf_counter()
        self.start_tokens = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        elapsed = time.perf_counter() - self.start
        if elapsed > 0 and state.num_input_tokens_seen:
            self.bar.set_postfix_str(self._postfix(state, elapsed), refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            self.bar.set_postfix_str(self._postfix(state, time.perf_counter() - self.start, logs), refresh=True)

    def _postfix(self, state, elapsed: float, logs: dict | None = None) -> str:
        parts = []
        loss = (logs or {}).get("loss")
        if loss is None and state.log_history:
            loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if elapsed > 0:
            parts.append(f"{(state.num_input_tokens_seen - self.start_tokens) / elapsed:,.0f} tok/s")
        return " | ".join(parts)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """End the bar's line. Also when training raises, so that the error printed next starts a line of its own."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def install(trainer, stage: str) -> ProgressBar:
    """Swap the trainer's default progress/printer callbacks for ours; returns it."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    bar = ProgressBar(stage)
    trainer.add_callback(bar)
    return bar
