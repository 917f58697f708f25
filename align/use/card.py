"""The README.md model card of an hf export, from the run dirs that made the model: the base model, each stage with
its data fingerprint and key hyper-parameters, its final metrics and held-out checks, and the `align eval` reports
found beside it. Torch-free; reads only the files the stages wrote (align/rundir.py names them)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align import models
from align.rundir import CONFIG_FILE, EVAL_MARKDOWN_FILE, LINEAGE, SUMMARY

KEY_SETTINGS = {
    "train": ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lr_scheduler", "max_length", "seed"),
    "model": ("dtype",),
    "model.lora": ("enabled", "rank", "alpha"),
    "": ("beta", "loss", "kl_coef"),
}
"""The hyper-parameters a card lists per stage (section -> keys); a key a stage does not have is left out."""
METRICS = ("steps", "train_loss", "eval_loss", "eval_accuracy", "eval_rewards/accuracies")


@dataclass
class StageRecord:
    dir: Path
    stage: str
    model: str
    """The model the stage started from (`model.name_or_path` of its config)."""
    settings: dict[str, Any]
    data: dict[str, Any]
    """The stage's data fingerprint (lineage.json), else its data sources from config.yaml."""
    metrics: dict[str, Any]
    held_out: Any
    evals: list[Path] = field(default_factory=list)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return value if isinstance(value, dict) else {}


def _section(cfg: dict[str, Any], dotted: str) -> dict[str, Any]:
    for key in filter(None, dotted.split(".")):
        cfg = cfg.get(key) or {}
    return cfg


def stage_record(path: Path) -> StageRecord | None:
    """What a stage output dir says about itself; None when `path` is not one (no config.yaml naming a stage)."""
    cfg = _read(path / CONFIG_FILE)
    if not isinstance(cfg.get("stage"), str) or not isinstance(cfg.get("model"), dict):
        return None
    settings = {f"{section}.{key}".lstrip("."): _section(cfg, section)[key] for section, keys in KEY_SETTINGS.items()
                for key in keys if key in _section(cfg, section)}
    if not settings.get("model.lora.enabled"):  # LoRA's rank and alpha mean nothing for a full fine-tune
        settings = {k: v for k, v in settings.items() if not k.startswith("model.lora.")}
    lineage, summary = _read(path / LINEAGE), _read(path / SUMMARY)
    data = lineage.get("data") or {"sources": (cfg.get("data") or {}).get("train")}
    evals = sorted(found.parent for found in path.rglob(EVAL_MARKDOWN_FILE))
    return StageRecord(path, cfg["stage"], str(cfg["model"].get("name_or_path")), settings, data,
                       {k: v for k, v in (summary.get("metrics") or {}).items() if k in METRICS},
                       summary.get("held_out"), evals)


def lineage(model_path: str) -> tuple[str, list[StageRecord]]:
    """(base model, the stages that made `model_path`, first to last). The chain follows each stage's starting model
    back while it is a stage output dir; what it ends at is the base."""
    chain: list[StageRecord] = []
    current = model_path
    while len(chain) < 32 and (record := stage_record(Path(current))) is not None:
        chain.insert(0, record)
        current = record.model
    # A LoRA adapter dir that is no stage output (made elsewhere) still names its base.
    while Path(current).is_dir() and (base := models.adapter_base(current)) is not None:
        current = base
    return current, chain


def render(name: str, model_path: str, verification: dict[str, Any], source_name: str) -> str:
    base, chain = lineage(model_path)
    front = {"library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["align", *dict.fromkeys(record.stage for record in chain)]}
    if _hub_id(base):  # the Hub links a card to its base model by hub id; an alias or a local path would not resolve
        front = {"base_model": base, **front}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(),
             "# license: set the licence before uploading (the base model's licence terms apply)", "---", "",
             f"# {name}", "",
             f"Exported by `align export` from `{source_name}`; base model: `{base}`.",
             ("LoRA adapters, if any, are merged into the weights; load it with "
             "`AutoModelForCausalLM.from_pretrained`."), "", "## How it was trained", ""]
    if not chain:
        lines += [f"No align run dirs found for `{model_path}`: the weights are `{base}` as they were.", ""]
    for index, record in enumerate(chain, 1):
        lines += [f"### {index}. {record.stage} (`{record.dir.name}`)", "", f"- started from: `{record.model}`"]
        fingerprint = record.data.get("fingerprint")
        sources = [s.get("path") if isinstance(s, dict) else s for s in record.data.get("sources") or []]
        lines.append(f"- data: {', '.join(f'`{s}`' for s in sources) or 'none recorded'}"
                     + (f" (fingerprint `{fingerprint}`)" if fingerprint else ""))
        lines += [f"- {key}: {value}" for key, value in record.settings.items()]
        if record.metrics:
            lines.append("- final metrics: " + ", ".join(f"{k} {_number(v)}" for k, v in record.metrics.items()))
        if record.held_out:
            lines += ["- held-out checks (summary.json `held_out`):", "", "```json",
                      json.dumps(record.held_out, indent=1, default=str)[:4000], "```"]
        for found in record.evals:
            lines += ["", f"#### Evaluation (`{found.relative_to(record.dir.parent)}`)", "",
                      (found / EVAL_MARKDOWN_FILE).read_text(encoding="utf-8").strip()]
        lines.append("")
    lines += ["## Export check", "", (f"Reloaded with transformers and compared with the source model on fixed chat "
              f"prompts: {verification['summary']}."), ""]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
