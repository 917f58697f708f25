"""What `setup.build` loads: with LoRA the reference is the adapter-disabled policy (and the merged model is exactly
base + LoRA), and a bad reward function fails before any weights load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from align import cli, config, models, stages
from align.errors import ConfigError


def test_ppo_lora_uses_the_adapter_disabled_policy_as_reference(tmp_path, make_cfg, tiny_model_dir,
                                                                tiny_reward_model_dir, capture_build):
    """The merged model is base + (alpha / rank) B A exactly where LoRA adapts and the base elsewhere: the frozen
    base weights never moved, and the adapter did."""
    cfg = make_cfg(tmp_path, tiny_model_dir, "model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8",
                   "save_merged=true", "train.max_steps=1", reward_dir=tiny_reward_model_dir)
    out = stages.run("ppo", cfg).output_dir
    assert capture_build[0].reference is None, "no second policy copy with LoRA"
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), "LoRA B starts at 0 and must move"
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    merged = load_file(str(out / "merged" / "model.safetensors"))
    adapted = {k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
               for k in adapter if "lora_A" in k}
    for name, weight in merged.items():
        expected = start[name]
        if name in adapted:
            prefix = "base_model.model." + name.removesuffix(".weight")
            expected = expected + 2.0 * adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
        torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6)
    assert len(adapted) == 14, "all-linear: 7 projections x 2 layers"


def test_bad_reward_function_fails_before_any_weights_load(tmp_path, make_cfg, tiny_model_dir, reward_file,
                                                            monkeypatch):
    with pytest.raises(ConfigError, match=r"reward_model\.function: module 'no_such_module' not found"):
        make_cfg(tmp_path, tiny_model_dir, function="no_such_module:score")
    path = tmp_path / "ppo.yaml"
    path.write_text(config.dump_yaml(make_cfg(tmp_path, tiny_model_dir, function=f"{reward_file}:half"))
                    .replace(f"{reward_file}:half", "no_such_module:score"))
    assert cli.main(["ppo", "--config", str(path)]) == 2

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the reward function was checked")

    monkeypatch.setattr(models, "load_causal_lm", no_weights)
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        stages.run("ppo", make_cfg(tmp_path, tiny_model_dir, function=f"{reward_file}:missing"))
