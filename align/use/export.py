"""`align export MODEL --format hf|gguf --out DIR`: a merged Hugging Face checkpoint with a model card, or one GGUF
file with an Ollama Modelfile; either way checked against its source (align.use.verify) before it counts as done.

Everything that can be refused is refused before a weight loads or a file is written: an architecture the format
does not support, an output dir that is not empty. A failed check is an error; the files stay for inspection, with
export.json saying what failed.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align import config, models
from align.errors import ConfigError, ModelError
from align.use import card, gguf_file, hf_export, verify
from align.use import source as sources
from align.use.config import ExportConfig

log = logging.getLogger(__name__)

EXPORT_FILE = "export.json"
CARD_FILE = "README.md"


@dataclass
class ExportResult:
    out: Path
    files: list[Path]
    verification: verify.Verification
    seconds: float
    """Wall time from loading the source to the verified export."""


def check(cfg: ExportConfig) -> tuple[sources.Source, str]:
    """(the source, the precision it is written in), once every refusal has been made; loads no weights."""
    from transformers import AutoConfig

    found = sources.resolve(cfg.model)
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out: {out} exists and is not an empty directory; give a new path")
    base = sources.base_config(found.path) or AutoConfig.from_pretrained(found.path).to_dict()
    if cfg.format == "hf":
        hf_export.check_supported(base)
        return found, hf_export.source_dtype(base) if cfg.dtype == "auto" else cfg.dtype
    tokenizer = models.load_tokenizer(found.model_config(), found.path)
    with tempfile.TemporaryDirectory(prefix="align-export-") as saved:
        tokenizer.save_pretrained(saved)
        gguf_file.check_supported(base, Path(saved) / "tokenizer.json")
    return found, cfg.quant


def run(cfg: ExportConfig) -> ExportResult:
    found, precision = check(cfg)
    models.configure_threads(cfg.num_threads)
    started = time.perf_counter()
    tokenizer, model = sources.load(found)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.format == "hf":
        hf_export.write(model, tokenizer, out, precision)
        checked = out
    else:
        written = gguf_file.write(model, tokenizer, out, precision, name=out.name)
        log.info("wrote %s (%s)", written.gguf, written.tensor_types)
        checked = written.gguf
    result = verify.verify(model, tokenizer, checked, cfg.format, precision)
    seconds = time.perf_counter() - started
    record: dict[str, Any] = {"source": found.name, "source_path": found.path, "format": cfg.format,
                              "precision": precision, "seconds": round(seconds, 1),
                              "verification": {**result.as_dict(), "summary": result.summary()},
                              "config": config.to_dict(cfg)}
    if cfg.format == "hf":
        text = card.render(out.name, found.path, record["verification"], found.name)
        (out / CARD_FILE).write_text(text, encoding="utf-8")
    files = sorted(path for path in out.iterdir() if path.is_file())
    record["files"] = {path.name: path.stat().st_size for path in files}
    (out / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if not result.passed:
        raise ModelError(f"the export in {out} does not match its source: {'; '.join(result.problems)} "
                         f"({result.summary()}); see {out / EXPORT_FILE}")
    return ExportResult(out, files + [out / EXPORT_FILE], result, seconds)
