"""Write a merged Hugging Face checkpoint: weights in the dtype asked, tokenizer with its chat template, and a
generation_config.json that stops at the chat template's end-of-turn token and pads with the tokenizer's pad token."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from align.errors import ModelError

log = logging.getLogger(__name__)

DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
"""config.json's dtype spelling -> ours."""


def check_supported(config: dict) -> None:
    """Raise ModelError for a model that is not a causal LM (a reward or value model has a score head instead)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architecture = (config.get("architectures") or ["(none named)"])[0]
    causal = {name for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
              for name in ([names] if isinstance(names, str) else names)}
    if architecture not in causal:
        raise ModelError(f"hf export supports causal language models (those AutoModelForCausalLM loads, as align's "
                         f"sft, dpo and ppo stages write); this model is {architecture}")


def source_dtype(config: dict) -> str:
    """The dtype the source checkpoint is stored in, as fp32 | bf16 | fp16 (fp32 when config.json does not say)."""
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPE_NAMES.get(str(stored).removeprefix("torch."), "fp32")


def write(model, tokenizer, out: Path, dtype: str) -> list[Path]:
    """Save `model` (merged, fp32; left unchanged) in `dtype` with `tokenizer` into `out`; the files written."""
    from align import models

    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no eos token, so the export could not stop a reply")
    exported = copy.deepcopy(model).to(models.resolve_dtype(dtype)) if dtype != "fp32" else model
    generation = exported.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    exported.config.pad_token_id = tokenizer.pad_token_id
    exported.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sorted(path for path in out.iterdir() if path.is_file())
