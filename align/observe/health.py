"""Training health alerts: known failure signatures read from the logged metrics, as they stream in.

`HealthMonitor.update(step, metrics)` looks at one log record at a time and returns the alerts it newly raises;
`check(history)` runs a fresh monitor over a whole `metrics.jsonl`. Each rule fires at most once per run. A NaN or
infinite loss is "fatal": `health_callback` then stops the trainer, and the stage keeps its last checkpoint instead
of saving the broken model. Every other alert is a "warning": training goes on.

Rules compare a metric's *start* (the mean of its first `window` logged values) with its *current* value (the mean
of its last `window`), so a single noisy log neither sets nor trips them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from align.sections import HealthConfig

log = logging.getLogger(__name__)

Severity = Literal["warning", "fatal"]

# Metric names as TRL and our PPO loop log them, with "eval_" for the evaluation pass.
CHOSEN_LOGPS_AND_MARGINS = (("logps/chosen", "rewards/margins"), ("eval_logps/chosen", "eval_rewards/margins"))
ACCURACY = "rewards/accuracies"
LENGTH_KEYS = ("tokens/response_len_mean", "completions/length_mean", "completions/mean_length")
EOS_RATE_KEY = "completions/eos_rate"
MISSING_EOS_KEY = "val/frac_missing_eos"
KL_KEY = "objective/kl"
TOKEN_KL_KEY = "kl"
"""GRPO and RLOO (TRL): the mean per-token KL to the reference, not PPO's per-response sum."""
REPETITION_KEY = "completions/repetition_rate"
TRAINING_REPETITION_KEY = "completions/train_repetition_rate"
"""GRPO / RLOO: the same rate over the completions a step trained on (align.stages.group_rl)."""
REPETITION_KEYS = (REPETITION_KEY, TRAINING_REPETITION_KEY)
REWARD_KEY, REWARD_STD_KEY = "reward", "reward_std"
"""GRPO and RLOO (TRL): the mean weighted reward of a step's completions, and its spread."""


@dataclass(frozen=True)
class Alert:
    name: str
    """A short identifier, e.g. "kl_blowup" (also the W&B alert title)."""
    step: int
    message: str
    severity: Severity

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_number(value: Any) -> float | None:
    """A logged value as a float: numbers as they are, "nan"/"inf" strings (how metrics.jsonl keeps them) parsed,
    anything else (text, booleans, lists) None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "item"):
        return float(value.item())
    if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(value)
    return None


def is_loss_key(key: str) -> bool:
    """Keys whose non-finite value means the weights are (or are about to be) broken."""
    return "loss" in key or key == "grad_norm"


@dataclass
class HealthMonitor:
    """Feeds log records to the rules; remembers each metric's history and which rules already fired."""

    config: HealthConfig = field(default_factory=HealthConfig)
    max_steps: int | None = None
    """Total optimizer steps, for the early-accuracy rule (which stays quiet while it is unknown)."""
    history: dict[str, list[float]] = field(default_factory=dict, init=False)
    """Every finite value logged so far, by metric."""
    fired: set[str] = field(default_factory=set, init=False)
    """Rules that already raised their alert."""

    def update(self, step: int, metrics: dict[str, Any]) -> list[Alert]:
        """Add one log record and return the alerts it raises (none once a rule has fired before)."""
        if not self.config.enabled:
            return []
        alerts = self._non_finite_losses(step, metrics)
        for key, value in metrics.items():
            number = as_number(value)
            if number is not None and math.isfinite(number):
                self.history.setdefault(key, []).append(number)
        if MISSING_EOS_KEY in metrics and EOS_RATE_KEY not in metrics:
            missing = as_number(metrics[MISSING_EOS_KEY])
            if missing is not None and math.isfinite(missing):
                self.history.setdefault(EOS_RATE_KEY, []).append(1.0 - missing)
        for rule in (self._chosen_logps_collapse, self._early_accuracy, self._length_runaway, self._eos_rate_drop,
                     self._repetition_rise, self._kl_blowup, self._token_kl_blowup, self._reward_plateau):
            alert = rule(step, metrics)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _fire(self, name: str, step: int, message: str, severity: Severity = "warning") -> Alert | None:
        if name in self.fired:
            return None
        self.fired.add(name)
        return Alert(name=name, step=step, message=message, severity=severity)

    def _start_and_now(self, key: str) -> tuple[float, float] | None:
        """(start, current) of a metric once it has two windows of values, else None."""
        values = self.history.get(key, [])
        w = self.config.window
        if len(values) < 2 * w:
            return None
        return sum(values[:w]) / w, sum(values[-w:]) / w

    def _non_finite_losses(self, step: int, metrics: dict[str, Any]) -> list[Alert]:
        broken = {key: as_number(value) for key, value in metrics.items() if is_loss_key(key)}
        broken = {key: value for key, value in broken.items() if value is not None and not math.isfinite(value)}
        if not broken:
            return []
        shown = ", ".join(f"{key} = {value}" for key, value in broken.items())
        alert = self._fire("non_finite_loss", step,
                           f"{shown} at step {step}: training stops here and the last checkpoint is kept. Rerun "
                           "with train.resume=true and a lower train.learning_rate (it applies from that checkpoint "
                           "on); or check the data for empty or huge rows, or use fp32/bf16 instead of fp16.",
                           severity="fatal")
        return [alert] if alert else []

    def _chosen_logps_collapse(self, step: int, metrics: dict[str, Any]) -> Alert | None:
        for logps_key, margins_key in CHOSEN_LOGPS_AND_MARGINS:
            if logps_key not in metrics:
                continue
            logps, margins = self._start_and_now(logps_key), self._start_and_now(margins_key)
            if logps is None or margins is None:
                continue
            (logps_start, logps_now), (margins_start, margins_now) = logps, margins
            fell = logps_start - logps_now > self.config.chosen_logps_drop * abs(logps_start)
            if fell and margins_now > margins_start:
                return self._fire(
                    "chosen_logps_collapse", step,
                    f"{logps_key} fell from {logps_start:.4g} to {logps_now:.4g} while {margins_key} rose from "
                    f"{margins_start:.4g} to {margins_now:.4g}: DPO is widening the margin by pushing the chosen "
                    "replies down too, so the policy drifts away from good answers. Try a lower learning rate or a "
                    "larger beta.")
        return None

    def _early_accuracy(self, step: int, metrics: dict[str, Any]) -> Alert | None:
        values = self.history.get(ACCURACY, [])
        w = self.config.window
        if ACCURACY not in metrics or self.max_steps is None or len(values) < w:
            return None
        if step <= self.config.early_fraction * self.max_steps and min(values[-w:]) >= 1.0:
            return self._fire(
                "early_perfect_accuracy", step,
                f"{ACCURACY} has been 1.0 for the last {w} logs at step {step} of {self.max_steps} (within the "
                f"first {self.config.early_fraction:.0%}): the pairs are too easy to tell apart or are being "
                "memorised. Watch eval_rewards/accuracies; consider fewer epochs, a larger beta or harder pairs.")
        return None

    def _length_runaway(self, step: int, metrics: dict[str, Any]) -> Alert | None:
        for key in LENGTH_KEYS:
            found = self._start_and_now(key) if key in metrics else None
            if found is None:
                continue
            start, now = found
            if start > 0 and now > self.config.length_growth * start:
                return self._fire(
                    "length_runaway", step,
                    f"{key} grew from {start:.4g} to {now:.4g} tokens (over {self.config.length_growth:g}x its "
                    "start): the policy may be exploiting a length bias of the reward. Check samples; consider a "
                    "larger KL coefficient or a length penalty.")
        return None

    def _eos_rate_drop(self, step: int, metrics: dict[str, Any]) -> Alert | None:
        if EOS_RATE_KEY not in metrics and MISSING_EOS_KEY not in metrics:
            return None
        found = self._start_and_now(EOS_RATE_KEY)
        if found is None:
            return None
        start, now = found
        if start > 0 and now < (1.0 - self.config.eos_rate_drop) * start:
            return self._fire(
                "eos_rate_drop", step,
                f"the EOS rate fell from {start:.3g} to {now:.3g}: more replies run to the length limit without "
                "ending. Check samples for repetition; consider a missing-EOS penalty or a larger KL coefficient.")
        return None

    def _repetition_rise(self, step: int, metrics: dict[str, Any]) -> Alert | None:
        for key in REPETITION_KEYS:
            found = self._start_and_now(key) if key in metrics else None
            if found is None:
                continue
            start, now = found
            if now - start > self.config.repetition_rise:
                return self._fire(
                    "repetition_rise", step,
                    f"{key} rose from {start:.3g} to {now:.3g}: more replies repeat themselves, a common way to game "
                    "a reward model. Read the samples; consider a larger (or adaptive) KL coefficient, fewer updates "
                    "or a stronger reward model.")
        return None

    def _kl_blowup(self, step: int, metrics: dict[str, Any]) -> Alert | None:
        return self._kl_over(step, metrics, KL_KEY, self.config.kl_max, self.config.kl_jump, "nats")

    def _token_kl_blowup(self, step: int, metrics: dict[str, Any]) -> Alert | None:
        limit = self.config.token_kl_max
        return self._kl_over(step, metrics, TOKEN_KL_KEY, limit, limit, "nats per token")

    def _kl_over(self, step: int, metrics: dict[str, Any], key: str, limit: float, jump: float,
                 unit: str) -> Alert | None:
        values = self.history.get(key, [])
        w = self.config.window
        if key not in metrics or len(values) < w:
            return None
        now = sum(values[-w:]) / w
        if now > limit:
            reason = f"averages {now:.4g} {unit} over the last {w} logs (limit {limit:g})"
        elif len(values) > w and values[-1] - sum(values[-w - 1:-1]) / w > jump:
            reason = (f"jumped to {values[-1]:.4g} from {sum(values[-w - 1:-1]) / w:.4g} (more than "
                      f"{jump:g} {unit} in one log)")
        else:
            return None
        return self._fire(
            "kl_blowup", step,
            f"{key} {reason}: the policy is moving away from the reference fast. Consider a lower learning "
            "rate, a larger KL coefficient (or an adaptive one) or a smaller clip range.")

    def _reward_plateau(self, step: int, metrics: dict[str, Any]) -> Alert | None:
        values = self.history.get(REWARD_KEY, [])
        if REWARD_KEY not in metrics or len(values) < max(self.config.reward_plateau_logs, 2 * self.config.window):
            return None
        start, now = self._start_and_now(REWARD_KEY)
        spreads = self.history.get(REWARD_STD_KEY, [])[:self.config.window]
        spread = sum(spreads) / len(spreads) if spreads else abs(start)
        if now - start > self.config.reward_plateau_gain * spread:
            return None
        return self._fire(
            "reward_plateau", step,
            f"{REWARD_KEY} went from {start:.4g} to {now:.4g} in {len(values)} logs, less than "
            f"{self.config.reward_plateau_gain:g} x its starting spread ({REWARD_STD_KEY} {spread:.3g}): training is "
            "not raising the reward. Check frac_reward_zero_std (a group whose completions all score the same "
            "teaches nothing): try a higher temperature or num_generations, a reward with finer steps, or a "
            "higher learning rate.")


def check(history: Iterable[dict[str, Any]], config: HealthConfig | None = None,
          max_steps: int | None = None) -> list[Alert]:
    """Every alert a run's log records raise, in order; each record holds a "step" (as in metrics.jsonl)."""
    monitor = HealthMonitor(config or HealthConfig(), max_steps=max_steps)
    alerts: list[Alert] = []
    for record in history:
        metrics = {key: value for key, value in record.items() if key not in ("step", "time")}
        alerts.extend(monitor.update(int(record["step"]), metrics))
    return alerts


WANDB_LEVELS = {"warning": "WARN", "fatal": "ERROR"}


class HealthReporter:
    """Runs a monitor on incoming metrics and acts on its alerts: logs them, sends them to W&B when the tracker has a
    run, keeps them for the stage summary, and remembers a fatal one (`stopped_on_fatal`)."""

    def __init__(self, monitor: HealthMonitor, tracker: Any = None):
        self.monitor = monitor
        self.tracker = tracker
        self.alerts: list[Alert] = []
        self.fatal: Alert | None = None

    @property
    def stopped_on_fatal(self) -> bool:
        """True once a fatal alert fired: the model in memory is broken and must not be saved over the last
        checkpoint."""
        return self.fatal is not None

    def observe(self, step: int, metrics: dict[str, Any]) -> list[Alert]:
        """Feed one log record to the monitor and report what it raises."""
        alerts = self.monitor.update(step, metrics)
        is_main = self.tracker is None or self.tracker.is_main
        for alert in alerts:
            self.alerts.append(alert)
            if alert.severity == "fatal" and self.fatal is None:
                self.fatal = alert
            if is_main:
                log.warning("health alert %s at step %d: %s", alert.name, alert.step, alert.message)
            run = getattr(self.tracker, "run", None)
            if run is not None:
                run.alert(title=alert.name, text=f"step {alert.step}: {alert.message}",
                          level=WANDB_LEVELS[alert.severity])
        return alerts

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a resumed run's rules compare against the run's own start (not the
        resumed part's) and its summary lists the alerts raised before the resume (JSON-safe)."""
        return {"history": self.monitor.history, "fired": sorted(self.monitor.fired),
                "alerts": [alert.to_dict() for alert in self.alerts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.history = {key: list(values) for key, values in state["history"].items()}
        self.monitor.fired = set(state["fired"])
        self.alerts = [Alert(**alert) for alert in state["alerts"]]

    def summary(self) -> dict[str, Any]:
        """What the stage's summary.json records: every alert, and the fatal one that stopped training, if any."""
        return {"alerts": [alert.to_dict() for alert in self.alerts],
                "stopped_on_fatal": self.fatal.to_dict() if self.fatal else None}


def health_callback(monitor: HealthMonitor, tracker: Any = None):
    """A transformers TrainerCallback (and `HealthReporter`) that checks every trainer log.

    Its state goes into every checkpoint and comes back when the run resumes. It runs on every process, so on a fatal
    alert all of them stop together (the logged values are the same everywhere); only the main process logs and sends
    alerts. On a fatal alert it sets `control.should_training_stop`, and cancels this step's checkpoint and evaluation
    so nothing broken is written; the caller checks `stopped_on_fatal` and skips its final save.
    """
    # Defined here so that importing this module does not import transformers (config loading stays light).
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class HealthCallback(TrainerCallback, HealthReporter, ExportableState):
        def state(self) -> dict[str, Any]:
            """Saved in each checkpoint's trainer_state.json (`stateful_callbacks`)."""
            return {"args": {}, "attributes": self.state_dict()}

        def on_train_begin(self, args, state, control, **kwargs):
            if self.monitor.max_steps is None and state.max_steps > 0:
                self.monitor.max_steps = state.max_steps
            saved = state.stateful_callbacks.get(type(self).__name__) if state.global_step else None
            if isinstance(saved, dict) and "history" in saved.get("attributes", {}):
                self.load_state_dict(saved["attributes"])  # resumed: the baselines and alerts so far

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                self.observe(state.global_step, logs)
            if self.stopped_on_fatal:
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False

    return HealthCallback(monitor, tracker)
