"""DPO and KTO reference log-probs computed once before training and kept on disk, so later runs skip the reference.

trl.DPOTrainer's and trl.KTOTrainer's `precompute_ref_log_probs` write them next to the dataset's cache files. Our datasets live in
memory, so that is a per-process temporary file: deleted at exit, and under accelerate the other ranks look for rank
0's file in their own temporary dir and fail. Here every process joins the reference forward pass (results gathered
in dataset order) and, with the cache on, the main process stores the log-probs under
`$ALIGN_CACHE_DIR/ref_logps/<key>/`. The key hashes everything that changes them: the reference weights and config,
the tokenized rows (so the chat template, tokenizer and data; KTO's rows include the mismatched completions its KL
term scores), which columns are stored, max_length and truncation, TRL's version, the
precision and ld_alpha. Re-runs, resumes and sweep trials that vary only beta, the loss or the optimizer hit it.
Settings that only change rounding (batch size, attention kernel, device) are not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align import registry, rundir
from align.errors import AlignError, ConfigError

log = logging.getLogger(__name__)

FORMAT = 2
"""Bumped when an entry's contents or key change meaning, so older entries are never read."""
VALUES_FILE = "logps.npz"
KEY_FILE = "key.json"


@dataclass(frozen=True)
class Layout:
    """Which tokenized columns a trainer's reference log-probs depend on, and the columns it stores them in (in the
    order its `compute_ref_log_probs` returns them)."""

    tokens: tuple[str, ...]
    values: tuple[str, ...]


DPO = Layout(("prompt_ids", "chosen_ids", "rejected_ids"), ("ref_chosen_logps", "ref_rejected_logps"))
KTO = Layout(("prompt_ids", "completion_ids", "KL_completion_ids"), ("ref_logps", "ref_KL_logps"))
KTO_WITHOUT_KL = Layout(("prompt_ids", "completion_ids"), ("ref_logps",))
"""KTO losses without a KL term (apo_zero_unpaired): TRL builds no mismatched completions."""
# Config entries that do not change what a forward pass computes.
_CONFIG_NOISE = {"transformers_version", "use_cache", "output_hidden_states", "output_attentions", "return_dict",
                 "dtype", "torch_dtype"}


def cache_root() -> Path:
    return registry.cache_dir() / "ref_logps"


def check_writable() -> None:
    """Refuse a cache dir this process cannot write before any work: _write finds out only after the reference pass."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(dir=root, prefix=".write-check-")).rmdir()
    except OSError as e:
        raise ConfigError(f"ref_cache: cannot write the reference log-prob cache dir {root} "
                          f"({e.strerror or e}); make it writable, point $ALIGN_CACHE_DIR elsewhere, "
                          f"or set ref_cache=false") from e


def weights_hash(model) -> str:
    """sha256 of a model's architecture config and every state-dict tensor (name, dtype, shape and bits)."""
    import torch

    if any(hasattr(p, "ds_id") for p in model.parameters()):
        # ZeRO-3 leaves each process an empty placeholder per weight: every model of one shape would hash alike.
        raise ConfigError("ref_cache: the reference is partitioned by DeepSpeed ZeRO-3 and cannot be hashed; "
                          "set ref_cache=false")
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k not in _CONFIG_NOISE}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def data_hash(dataset, columns: tuple[str, ...]) -> str:
    """sha256 of the tokenized rows TRL trains on (the token id `columns`), in row order."""
    import pyarrow.compute as pc

    digest = hashlib.sha256()
    for batch in dataset.select_columns(list(columns)).with_format("arrow").iter(batch_size=4096):
        for name in columns:
            column = batch.column(name)
            digest.update(pc.list_value_length(column).cast("int64").to_numpy())
            digest.update(pc.list_flatten(column).cast("int64").to_numpy())
    return digest.hexdigest()


@dataclass
class RefLogps:
    """Where one trainer's precomputed reference log-probs come from; `report` goes to summary.json."""

    settings: dict[str, Any]
    """Key parts besides the data: reference weights hash, max_length, truncation, precision, TRL version, ..."""
    layout: Layout = DPO
    root: Path | None = None
    """The cache dir; None computes them every run and keeps nothing."""
    report: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per split: {cache: hit | miss | off, key, seconds}."""

    @classmethod
    def create(cls, reference, args, tokenizer, persist: bool, layout: Layout = DPO) -> RefLogps:
        """For trl.DPOConfig or trl.KTOConfig `args`; `reference` is the model whose log-probs these are, before
        TRL wraps it."""
        if not persist:
            return cls(settings={}, layout=layout)
        import trl

        template = json.dumps(tokenizer.chat_template, sort_keys=True)
        settings = {
            "format": FORMAT, "trl": trl.__version__, "reference": weights_hash(reference),
            "columns": list(layout.values), "max_length": args.max_length,
            # DPO's own truncation settings; trl.KTOConfig has neither.
            "truncation_mode": getattr(args, "truncation_mode", None), "ld_alpha": getattr(args, "ld_alpha", None),
            "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            "chat_template": hashlib.sha256(template.encode()).hexdigest(),
        }
        return cls(settings=settings, root=cache_root(), layout=layout)

    def key(self, dataset) -> str:
        parts = {**self.settings, "data": data_hash(dataset, self.layout.tokens)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def attach(self, trainer, dataset, name: str, batch_size: int):
        """`dataset` plus the two reference log-prob columns, read from the cache or computed (then stored)."""
        from accelerate.utils import broadcast_object_list
        from datasets import Dataset, concatenate_datasets

        started = time.perf_counter()
        accelerator = trainer.accelerator
        key, values = None, None
        if self.root is not None:
            # Rank 0 decides and reads; the others get its key and values, so no shared filesystem is assumed.
            shared = [self.key(dataset), None]
            if accelerator.is_main_process:
                shared[1] = self._read(shared[0], len(dataset))
            broadcast_object_list(shared, from_process=0)
            key, values = shared
        hit = values is not None
        if not hit:
            values = compute(trainer, dataset, name, batch_size, self.layout.values)
            if self.root is not None and accelerator.is_main_process:
                self._write(key, values, name)
            accelerator.wait_for_everyone()
        seconds = time.perf_counter() - started
        status = "off" if self.root is None else "hit" if hit else "miss"
        self.report[name] = {"cache": status, "key": key, "seconds": round(seconds, 2)}
        if accelerator.is_main_process:
            entry = self.root / key if key else None
            messages = {"hit": f"cache hit ({entry}); reference forward pass skipped",
                        "miss": f"computed in {seconds:.1f} s; stored in {entry}",
                        "off": f"computed in {seconds:.1f} s (ref_cache=false: not stored)"}
            log.info("reference log-probs of %d %s rows: %s", len(dataset), name, messages[status])
        return concatenate_datasets([dataset, Dataset.from_dict(values)], axis=1)

    def _read(self, key: str, rows: int) -> dict[str, Any] | None:
        import numpy as np

        path = self.root / key / VALUES_FILE
        if not path.is_file():
            return None
        try:
            with np.load(path) as stored:
                values = {name: stored[name] for name in self.layout.values}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise AlignError(f"reference log-prob cache entry {path.parent} is unreadable ({e}); delete it") from e
        if any(len(v) != rows for v in values.values()):
            held = len(values[self.layout.values[0]])
            raise AlignError(f"reference log-prob cache entry {path.parent} holds {held} rows, the data {rows}; "
                             f"delete it")
        return values

    def _write(self, key: str, values: dict[str, Any], name: str) -> None:
        """Write into a temporary dir, then rename it into place: an entry is complete or absent, never half."""
        import numpy as np

        final = self.root / key
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key}-"))
        try:
            np.savez(staging / VALUES_FILE, **values)
            meta = {**self.settings, "split": name, "rows": len(values[self.layout.values[0]]),
                    "created": rundir.timestamp()}
            (staging / KEY_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            staging.rename(final)
        except OSError:
            if not (final / VALUES_FILE).is_file():
                raise
            log.info("another run stored %s first; keeping its entry", final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def compute(trainer, dataset, name: str, batch_size: int, columns: tuple[str, ...]) -> dict[str, Any]:
    """The reference log-probs of every row as the trainer (DPO, KTO) computes them, gathered from all processes:
    the first len(`columns`) tensors its `compute_ref_log_probs` returns, by column."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    accelerator = trainer.accelerator
    loader = accelerator.prepare(DataLoader(
        dataset, batch_size=batch_size, collate_fn=trainer.data_collator, shuffle=False,
        num_workers=trainer.args.dataloader_num_workers, pin_memory=trainer.args.dataloader_pin_memory))
    model = trainer.ref_model or trainer.model
    if trainer.ref_model is None and trainer.is_deepspeed_enabled:
        # As TRL does: before `train`, ZeRO parameters are still on CPU or sharded; an inference engine places them.
        if trainer._precompute_engine is None:
            from trl.models import prepare_deepspeed

            trainer._precompute_engine = prepare_deepspeed(trainer.model, accelerator)
        model = trainer._precompute_engine
    parts: list[list] = [[] for _ in columns]
    for batch in tqdm(loader, desc=f"reference log-probs ({name})", disable=not accelerator.is_main_process):
        batch_values = trainer.compute_ref_log_probs(model, batch)[:len(columns)]
        for part, value in zip(parts, accelerator.gather_for_metrics(tuple(batch_values)), strict=True):
            part.append(value.float().cpu())
    return {column: torch.cat(part).numpy() for column, part in zip(columns, parts, strict=True)}


def cached_trainer(trainer_class):
    """trl.DPOTrainer or trl.KTOTrainer whose `precompute_ref_log_probs` goes through a `RefLogps` (pass it as
    `ref_logps=`)."""

    class PrecomputedRefTrainer(trainer_class):
        def __init__(self, *args, ref_logps: RefLogps, **kwargs):
            self.ref_logps = ref_logps
            super().__init__(*args, **kwargs)
            # Every split now carries its reference log-probs; an explicit reference need not stay in memory.
            self.ref_model = None

        def _precompute_ref_logps(self, dataset, name, batch_size):
            return self.ref_logps.attach(self, dataset, name, batch_size)

    return PrecomputedRefTrainer
