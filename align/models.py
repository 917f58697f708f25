"""Load tokenizers and models as a stage's config asks: alias/path/hub id, dtype, attention, LoRA, QLoRA."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align import registry
from align.errors import ModelError
from align.sections import LoraConfig, ModelConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def configure_threads(num_threads: int) -> int:
    """Set torch's CPU threads. Oversubscribing a 2-core machine makes small matmuls far slower, so cap at cores."""
    import torch

    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = num_threads or available
    torch.set_num_threads(threads)
    return threads


def resolve_dtype(name: str) -> torch.dtype:
    """Map a config dtype to a torch dtype. auto: bf16 on GPUs that support it, fp32 otherwise.

    CPUs without native bf16 (AVX2 only) emulate it; TRL SFT on such a CPU measured >= 90 s/step in bf16 against
    ~10 s/step in fp32, so auto never picks bf16 on CPU.
    """
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def precision_flags(dtype: torch.dtype) -> dict[str, bool]:
    """The bf16/fp16 flags of transformers.TrainingArguments for a resolved dtype (TRL defaults bf16=True)."""
    import torch

    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def use_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def device() -> str:
    """Where a model runs when no accelerator or trainer places it: "cpu", or "cuda" when a GPU is there."""
    return "cpu" if use_cpu() else "cuda"


def resolve_path(name_or_path: str) -> str:
    """Alias -> cached checkpoint (pulled on first use); an existing directory -> itself; anything else is a hub id."""
    if name_or_path in registry.ALIASES:
        return registry.resolve(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {name_or_path!r} is a file; expected a checkpoint directory")
        if not is_model_dir(path):
            # transformers would fail on it with an unrelated tokenizer or config error.
            raise ModelError(f"model path {name_or_path!r} is a directory but not a model: it has no config.json "
                             f"(nor {ADAPTER_CONFIG} of a LoRA adapter). Give a checkpoint directory")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(
            f"model path {name_or_path!r} does not exist. Use an existing directory, a hub id such as "
            f"HuggingFaceTB/SmolLM2-135M-Instruct, or an alias: {', '.join(registry.ALIASES)}"
        )
    return name_or_path


def is_model_dir(path: Path) -> bool:
    """A checkpoint directory: a full model (config.json) or a LoRA adapter (adapter_config.json)."""
    return (path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file()


def _loading(what: str, name: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except OSError as e:
        raise ModelError(
            f"could not load {what} {name!r}: {e}. It is not a local directory or registered alias, and the hub "
            f"could not provide it (offline?). See `align models list`."
        ) from e
    except ValueError as e:
        # transformers refuses a checkpoint whose code ships with it unless trusted; its message names the argument.
        if kwargs.get("trust_remote_code") or "trust_remote_code" not in str(e):
            raise
        raise ModelError(f"{what} {name!r} comes with its own Python code, which runs only with "
                         f"model.trust_remote_code=true; set it if you trust the source") from e


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    from transformers import AutoTokenizer

    path = path or resolve_path(cfg.name_or_path)
    template = chat_template_text(cfg.chat_template) if cfg.chat_template else None
    tokenizer = _loading("tokenizer", cfg.name_or_path, AutoTokenizer.from_pretrained, path,
                         revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if template:
        tokenizer.chat_template = template
    if tokenizer.eos_token is None:
        raise ModelError(f"tokenizer of {cfg.name_or_path!r} has no eos token; stages need one to end replies")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        _choose_pad_token(tokenizer)
    return tokenizer


def chat_template_text(value: str) -> str:
    """model.chat_template: the text of the file it names, else the value itself as inline Jinja. A value that
    looks like a path but is no file is refused: used as the template it would only fail later, misleadingly."""
    if "{" in value:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if "/" in value or value.lower().endswith((".jinja", ".j2", ".txt")):
        raise ModelError(f"model.chat_template: {value!r} looks like a path but is not a file; give an existing "
                         f"template file or the Jinja template text itself")
    return value


def _choose_pad_token(tokenizer) -> None:
    """Pad with a token other than EOS when the vocabulary has one.

    With pad == eos, a reward model scores the token before the final EOS (transformers finds the last non-pad
    token) and PPO cannot tell a finished reply from padding. The choice is logged and saved with the tokenizer.
    """
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>", tokenizer.unk_token):
        if candidate and candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            log.info("padding with %r (id %d) instead of the eos token %r", candidate, vocab[candidate],
                     tokenizer.eos_token)
            tokenizer.pad_token = candidate
            return
    if tokenizer.pad_token is None:
        log.info("tokenizer has no pad token and no spare special token; padding with the eos token %r",
                 tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token


def _model_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(cfg.dtype),
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation:
        if cfg.attn_implementation.startswith("flash_attention") and use_cpu():
            # transformers fails deep inside from_pretrained with an ImportError or a kernel-download error.
            raise ModelError(f"model.attn_implementation: {cfg.attn_implementation} needs a CUDA GPU; none is "
                             f"available. Use sdpa or eager on CPU (or leave it unset)")
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.lora.quantize_4bit:
        kwargs["quantization_config"] = _four_bit_config(kwargs["dtype"])
    return kwargs


def _four_bit_config(compute_dtype: torch.dtype):
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ModelError("lora.quantize_4bit (QLoRA) needs a CUDA GPU; none is available. Set lora.quantize_4bit=false")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("lora.quantize_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def adapter_base(path: str | Path) -> str | None:
    """The base model a peft adapter dir was trained on (from its adapter_config.json); None for a full checkpoint."""
    file = Path(path) / ADAPTER_CONFIG
    if not file.is_file():
        return None
    base = json.loads(file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{path}: {ADAPTER_CONFIG} names no base_model_name_or_path, so its base model is unknown")
    return base


def merge_adapter(model, adapter_dir: str | Path):
    """`model` with the LoRA adapter in `adapter_dir` merged into its weights (a plain transformers model)."""
    import peft

    log.info("merging the LoRA adapter in %s into its base weights", adapter_dir)
    adapter = peft.PeftConfig.from_pretrained(str(adapter_dir))
    if adapter.task_type == "CAUSAL_LM" and not model.can_generate():
        adapter.task_type = None  # an sft adapter on a reward or value model's body: no generation wrapper
    merged = peft.PeftModel.from_pretrained(model, str(adapter_dir), config=adapter).merge_and_unload()
    merged.requires_grad_(True)  # peft froze the base weights; a loaded model is trainable like any other
    # An adapter trained on top of this model then names `adapter_dir` as its base, and loads back through here.
    merged.name_or_path = str(Path(adapter_dir).resolve())
    return merged


def _load_base_and_merge(loader, cfg: ModelConfig, path: str, **kwargs):
    """Load an adapter dir as its base with the adapter merged (the base may itself be an adapter dir)."""
    if cfg.lora.quantize_4bit:
        raise ModelError(f"{path} is a LoRA adapter; QLoRA cannot merge it into 4-bit weights. Save it merged "
                         "(save_merged: true) and start from the merged dir")
    base = loader(cfg, resolve_path(adapter_base(path)), **kwargs)
    return merge_adapter(base, path)


def load_causal_lm(cfg: ModelConfig, path: str | None = None):
    """The policy/causal LM, with dropout as configured by the checkpoint (stages decide whether to disable it).

    A LoRA adapter dir (an SFT output with LoRA) loads as its base model with the adapter merged.
    """
    from transformers import AutoModelForCausalLM

    path = path or resolve_path(cfg.name_or_path)
    if adapter_base(path) is not None:
        return _load_base_and_merge(load_causal_lm, cfg, path)
    model = _loading("model", cfg.name_or_path, AutoModelForCausalLM.from_pretrained, path, **_model_kwargs(cfg))
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    return model


def load_sequence_classifier(cfg: ModelConfig, path: str | None = None, pad_token_id: int | None = None):
    """A one-label sequence classifier (reward or value model); a causal-LM checkpoint gets a fresh score head.

    A LoRA adapter dir loads as its base with the adapter (and, for a reward model's adapter, its score head) merged.
    """
    from transformers import AutoModelForSequenceClassification

    path = path or resolve_path(cfg.name_or_path)
    if adapter_base(path) is not None:
        return _load_base_and_merge(load_sequence_classifier, cfg, path, pad_token_id=pad_token_id)
    model = _loading("model", cfg.name_or_path, AutoModelForSequenceClassification.from_pretrained, path,
                     num_labels=1, **_model_kwargs(cfg))
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def peft_config(lora: LoraConfig, model, task_type: str = "CAUSAL_LM"):
    """A peft.LoraConfig for `model`, or None when LoRA is off."""
    if not lora.enabled:
        return None
    import peft

    targets: str | list[str] = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    else:
        _check_lora_targets(model, lora.target_modules)
    # A sequence classifier's fresh score head must train and be saved with the adapter.
    modules_to_save = ["score"] if task_type == "SEQ_CLS" else None
    return peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                           task_type=task_type, modules_to_save=modules_to_save)


def _check_lora_targets(model, targets: list[str]) -> None:
    """Name targets that match no module or no layer LoRA adapts, with the layers it can: peft silently skips a
    missing name while another matches, and fails with a bare ValueError on a container such as `mlp`."""
    import torch
    from transformers.pytorch_utils import Conv1D

    # The layer types peft 0.21's LoRA adapts (its "is not supported" error lists the same).
    adaptable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, Conv1D,
                 torch.nn.MultiheadAttention)
    modules = dict(model.named_modules())
    problems = []
    for target in targets:  # peft's matching for a list of names: the whole name or its dotted suffix
        matched = [module for name, module in modules.items() if name == target or name.endswith(f".{target}")]
        if not matched:
            problems.append(f"{target!r} not in the model")
        elif not all(isinstance(module, adaptable) for module in matched):
            unfit = next(module for module in matched if not isinstance(module, adaptable))
            problems.append(f"{target!r} ({type(unfit).__name__}) not a layer LoRA can adapt")
    if problems:
        names = sorted({name.rsplit(".", 1)[-1] for name, module in modules.items() if isinstance(module, adaptable)})
        raise ModelError(f"model.lora.target_modules: {'; '.join(problems)}. Layers of this model LoRA can adapt: "
                         f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''} (or all-linear)")


def disable_dropout(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def frozen(model):
    """`model` as a fixed scorer (a reference or reward model): no gradients, eval mode, and dropout probabilities
    0, so its scores stay deterministic even if something later puts it back in train mode."""
    disable_dropout(model)
    return model.requires_grad_(False).eval()


def check_same_vocabulary(tokenizer, other_tokenizer, *, other: str, against: str, why: str,
                          chat_template: bool = False) -> None:
    """Raise ModelError where `other_tokenizer` (of the model named `other`) has a different vocabulary from
    `tokenizer` (of the model named `against`), or, with `chat_template`, renders conversations differently. A model
    that reads another model's token ids unchanged needs the same vocabulary; `why` says what would break."""
    if other_tokenizer.get_vocab() != tokenizer.get_vocab():
        differs = "vocabulary"
    elif chat_template and other_tokenizer.chat_template != tokenizer.chat_template:
        differs = "chat template"
    else:
        return
    raise ModelError(f"{other} has a different {differs} from {against}; {why}")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_merged(model, tokenizer, out: str | Path) -> Path:
    """Merge a peft adapter into its base weights and save a plain checkpoint (loadable without peft)."""
    merged = model.merge_and_unload()
    out = Path(out)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
