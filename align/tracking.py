"""Metric tracking: `metrics.jsonl` in the output dir always, plus Weights & Biases when asked.

W&B runs offline when no API key is available, so runs are kept on disk and can be synced later. Only the main
process of a multi-process launch logs. The W&B run id is stored in the output dir so a resumed stage continues
the same run. The API key is never written anywhere by us.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

from align.sections import TrackingConfig

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"


def wandb_mode(cfg: TrackingConfig) -> str:
    """online/offline/disabled; auto is online only with credentials (env key or a netrc entry)."""
    forced = os.environ.get("WANDB_MODE")
    if forced in ("disabled", "offline", "online", "dryrun"):
        return "offline" if forced == "dryrun" else forced
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class Tracker:
    """Logs metrics to `<output_dir>/metrics.jsonl` and, with backend=wandb, to a W&B run."""

    def __init__(self, cfg: TrackingConfig, output_dir: str | Path, *, stage: str, run_config: dict[str, Any],
                 is_main: bool = True):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.stage = stage
        self.is_main = is_main
        self.run = None
        self._file = None
        if not is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self._file = self.metrics_path.open("a", encoding="utf-8")
        if cfg.backend == "wandb":
            self.run = self._start_wandb(run_config)

    def _start_wandb(self, run_config: dict[str, Any]):
        import wandb

        mode = wandb_mode(self.cfg)
        id_file = self.output_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            name=self.cfg.name or f"{self.output_dir.name}-{self.stage}",
            group=self.cfg.group,
            job_type=self.stage,
            tags=list(self.cfg.tags) or None,
            config=run_config,
            dir=str(self.output_dir),
            mode=mode,
            id=run_id,
            resume="allow",
        )
        log.info("W&B run %s (%s mode) in %s", run_id, mode, self.output_dir / "wandb")
        return run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.is_main:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": step, "time": round(time.time(), 3), **{k: _json_safe(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.run is not None:
            self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = _scalar(value)

    def finish(self) -> dict[str, str]:
        """Close the run; returns where an offline W&B run lives and how to sync it (empty otherwise)."""
        info: dict[str, str] = {}
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.run is not None:
            run_dir = Path(self.run.dir).parent
            offline = self.run.settings.mode == "offline"
            self.run.finish()
            if offline:
                info = {"wandb_offline_dir": str(run_dir), "wandb_sync": f"wandb sync {run_dir}"}
            self.run = None
        return info

    def callback(self):
        """A transformers TrainerCallback forwarding the trainer's logs here."""
        from transformers import TrainerCallback

        tracker = self

        class _TrackerCallback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and state.is_world_process_zero:
                    tracker.log(logs, step=state.global_step)

        return _TrackerCallback()


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON; keep them visible as strings rather than dropping them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
