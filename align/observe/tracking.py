"""Metric tracking: `metrics.jsonl` in the output dir always, plus Weights & Biases when asked.

W&B runs offline when no API key is available, or when its server cannot be reached (one warning), so runs are kept
on disk and can be synced later. Only the main process of a multi-process launch logs. The W&B run id is stored in
the output dir so a resumed stage continues the same run. The API key is never written anywhere by us.

Lineage: a W&B run uses an artifact per input (each local data file, type "dataset"; each local input model dir,
type "model") and logs the stage's final model as a "model" artifact. Artifacts reference files by file:// URI and
MD5 (no upload unless tracking.upload_artifacts) and are named after the path, so the dir one stage writes and the
next stage reads are the same artifact version: W&B draws dataset -> sft -> dpo/ppo as one graph.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from align.rundir import LINEAGE, MERGED_DIR, METRICS_FILE, RUN_ID_FILE, SUMMARY, VALUE_MODEL_DIR
from align.sections import TrackingConfig

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".tiktoken")
"""Files at the top of a model dir that belong to the model (weights, configs, tokenizer, chat template)."""
NOT_MODEL_FILES = {SUMMARY, LINEAGE}
MODEL_SUBDIRS = (MERGED_DIR, VALUE_MODEL_DIR)
"""Sub-dirs that hold models too (a LoRA run's merged copy, PPO's value model); checkpoints, plots, wandb are not."""


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
        self.metrics_path = self.output_dir / METRICS_FILE
        self._file = self.metrics_path.open("a", encoding="utf-8")
        if cfg.backend == "wandb":
            self.run = self._start_wandb(run_config)

    def _start_wandb(self, run_config: dict[str, Any]):
        import wandb

        mode = wandb_mode(self.cfg)
        id_file = self.output_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        server = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url
        if mode == "online" and not reachable(server):
            log.warning("W&B: %s cannot be reached; logging offline instead (upload later with `wandb sync`)", server)
            mode = "offline"

        def init(mode: str):
            return wandb.init(
                project=self.cfg.project,
                entity=self.cfg.entity,
                name=self.cfg.name or default_run_name(self.output_dir, self.stage),
                group=self.cfg.group,
                job_type=self.stage,
                tags=list(self.cfg.tags) or None,
                config=run_config,
                dir=str(self.output_dir),
                mode=mode,
                id=run_id,
                resume="allow",
            )

        try:
            run = init(mode)
        except wandb.errors.Error as err:  # reached, but refused or timed out (a bad key, a proxy, a slow network)
            if mode != "online":
                raise
            log.warning("W&B: starting the online run failed (%s); logging offline instead (upload later with "
                        "`wandb sync`)", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
            mode = "offline"
            run = init(mode)
        log.info("W&B run %s (%s mode) in %s", run_id, mode, self.output_dir / "wandb")
        data_files, model_dirs = inputs_of(run_config)
        for path in data_files:
            use_artifact(run, file_artifact(wandb, path, "dataset"))
        for path in model_dirs:
            use_artifact(run, model_artifact(wandb, path, upload=False))
        return run

    def log_model(self, path: str | Path) -> None:
        """Log the stage's final model in `path` as this run's output "model" artifact (with W&B on)."""
        if self.run is None:
            return
        import wandb

        artifact = model_artifact(wandb, Path(path), upload=self.cfg.upload_artifacts)
        self.run.log_artifact(artifact, aliases=["latest", self.stage])
        log.info("W&B: logged model artifact %s (%s)", artifact.name,
                 "uploaded" if self.cfg.upload_artifacts else "by reference")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.is_main:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": step, "time": round(time.time(), 3), **{k: _json_safe(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.run is not None:
            self.run.log(values, step=step)

    def log_table(self, key: str, file_name: str, rows: list[dict[str, Any]], step: int) -> Path | None:
        """Append the rows, each with its step, to `<output_dir>/<file_name>` (JSON lines); with a W&B run, also log
        them as a `wandb.Table` under `key` (one table per call: W&B's step slider browses them). Main process only:
        returns the file, or None elsewhere."""
        if not self.is_main:
            return None
        path = self.output_dir / file_name
        with path.open("a", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
        if self.run is not None:
            import wandb

            columns = ["step", *rows[0]] if rows else ["step"]
            self.run.log({key: wandb.Table(columns=columns, data=[[step, *row.values()] for row in rows])}, step=step)
        return path

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
        # Defined here so that importing this module does not import transformers (config loading stays light).
        from transformers import TrainerCallback

        tracker = self

        class _TrackerCallback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and state.is_world_process_zero:
                    tracker.log(logs, step=state.global_step)

        return _TrackerCallback()


def reachable(url: str, timeout: float = 5.0) -> bool:
    """A TCP connection to `url`'s host and port opens within `timeout` seconds (name lookup included). Without it,
    an online `wandb.init` waits about 90 s for its own timeout and then raises."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            opened.append(True)
        except (OSError, UnicodeError):
            pass

    # A thread, as the name lookup itself has no timeout.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


def default_run_name(output_dir: Path, stage: str) -> str:
    """A run name that says what ran where: runs/r1/sft -> r1-sft, out -> out-sft, dpo_beta0.1 -> dpo_beta0.1."""
    name = output_dir.resolve().name
    if name == stage:
        return f"{output_dir.resolve().parent.name}-{stage}"
    return name if stage in name else f"{name}-{stage}"


def inputs_of(run_config: dict[str, Any]) -> tuple[list[Path], list[Path]]:
    """(local data files, local input model dirs) named by a stage's resolved config; hub ids are left out (the
    config names them)."""
    from align import registry

    data = run_config.get("data") or {}
    files = [Path(source["path"]).expanduser() for split in ("train", "eval") for source in data.get(split) or []]
    names = [run_config.get("reference")] + [(run_config.get(role) or {}).get("name_or_path")
                                             for role in ("model", "reward_model", "value_model")]
    dirs = []
    for name in names:
        if name in registry.ALIASES:
            path = registry.alias_path(name) if registry.is_pulled(name) else None
        else:
            path = Path(name).expanduser() if name else None
        if path is not None and path.is_dir() and path.resolve() not in [d.resolve() for d in dirs]:
            dirs.append(path)
    unique = list({path.resolve(): path for path in files if path.is_file()}.values())
    return unique, dirs


def artifact_name(path: Path) -> str:
    """`<parent>-<name>` of the resolved path, in the characters W&B allows: the same path, the same artifact."""
    path = path.resolve()
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{path.parent.name}-{path.name}").strip("_.-") or "root"


def model_files(path: Path) -> list[Path]:
    """The files of the model in `path`: top-level weights, configs and tokenizer files plus MODEL_SUBDIRS."""
    top = [f for f in sorted(path.iterdir()) if f.is_file() and f.suffix in MODEL_SUFFIXES
           and f.name not in NOT_MODEL_FILES]
    nested = [f for sub in MODEL_SUBDIRS if (path / sub).is_dir() for f in sorted((path / sub).rglob("*"))
              if f.is_file()]
    return top + nested


def file_artifact(wandb, path: Path, kind: str):
    artifact = wandb.Artifact(artifact_name(path), type=kind, metadata={"path": str(path.resolve())})
    artifact.add_reference(path.resolve().as_uri(), name=path.name)
    return artifact


def model_artifact(wandb, path: Path, upload: bool):
    """A "model" artifact of `path`'s model files, uploaded or referenced. Both give the same digest (it hashes each
    file's name and MD5), so a consumer's reference matches the producer's upload."""
    path = path.resolve()
    artifact = wandb.Artifact(artifact_name(path), type="model", metadata={"path": str(path)})
    for file in model_files(path):
        name = file.relative_to(path).as_posix()
        if upload:
            artifact.add_file(str(file), name=name)
        else:
            artifact.add_reference(file.as_uri(), name=name)
    return artifact


def use_artifact(run, artifact) -> None:
    """Record `artifact` as an input of `run`. wandb refuses `use_artifact` offline, so offline runs do what it
    does online with a new artifact: log it flagged to be used once committed; `wandb sync` then links it."""
    if run.settings.mode == "offline":
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(artifact)


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON; keep them visible as strings rather than dropping them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
