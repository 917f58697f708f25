"""ORPO and SimPO stages on a tiny model: no reference model, the weights move, the length-normalised margin between
chosen and rejected replies moves up on pairs a tiny model can separate (held-out prompts included), and config
mistakes name the key."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny import SEPARABLE_PAIRS, write_pairs

from align import config, models, stages
from align.errors import ConfigError
from align.observe import tracking
from align.sections import ModelConfig
from align.stages.orpo import ORPOConfig
from align.stages.simpo import SimPOConfig

CONFIGS = {"orpo": ORPOConfig, "simpo": SimPOConfig}
RANKINGS = {"orpo": "orpo policy per-token log-prob margin", "simpo": "simpo implicit reward"}


def make_cfg(stage, tmp_path, model_dir, *overrides):
    train = write_pairs(tmp_path / "train.jsonl", SEPARABLE_PAIRS[:8])
    held_out = write_pairs(tmp_path / "eval.jsonl", SEPARABLE_PAIRS[8:])
    base = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(train)], "eval": [str(held_out)]},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 8, "batch_size": 4, "learning_rate": 1e-2,
                      "max_length": 64, "save_steps": 4, "num_threads": 1, "lr_scheduler": "constant"}}
    return config.load_config(CONFIGS[stage], None, list(overrides), base=base)


def per_token_margins(model_dir, pairs_file) -> list[float]:
    """Per pair: mean log-prob per reply token of chosen minus rejected (the quantity both losses push up)."""
    from align.eval import scoring

    tokenizer = models.load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    model = models.load_causal_lm(ModelConfig(name_or_path=str(model_dir))).eval()
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    (chosen, n_c), (rejected, n_r) = (
        scoring.reply_logps_and_lengths(model, tokenizer, [p["prompt"] for p in pairs], [p[side] for p in pairs], 8)
        for side in ("chosen", "rejected"))
    return [c / a - r / b for c, a, r, b in zip(chosen, n_c, rejected, n_r, strict=True)]


@pytest.mark.parametrize("stage", ["orpo", "simpo"])
def test_reference_free_stage_moves_the_margin_up(stage, tmp_path, tiny_model_dir, monkeypatch):
    from align.stages import orpo, simpo

    module = {"orpo": orpo, "simpo": simpo}[stage]
    seen = {}
    real_build = module.build

    def spy(cfg, tracker):
        built = real_build(cfg, tracker)
        seen["trainer"] = built.trainer
        return built

    monkeypatch.setattr(module, "build", spy)
    cfg = make_cfg(stage, tmp_path, tiny_model_dir)
    result = stages.run(stage, cfg)
    out = tmp_path / "out"
    assert getattr(seen["trainer"], "ref_model", None) is None, "reference-free: no second model"
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    assert [k for k in before if torch.equal(before[k], trained[k])] == []

    eval_file = tmp_path / "eval.jsonl"
    start, end = per_token_margins(tiny_model_dir, eval_file), per_token_margins(out, eval_file)
    assert all(e > s for s, e in zip(start, end, strict=True)), (start, end)
    assert all(e > 0 for e in end), end
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == "none (reference-free)"
    assert summary["held_out"]["accuracy"]["all"][RANKINGS[stage]]["accuracy"] == 1.0
    logged = tracking.read_metrics(out)
    margins = [m["rewards/margins"] for m in logged if "rewards/margins" in m]
    assert len(margins) == 8 and margins[-1] > margins[0]
    assert result.metrics["eval_rewards/accuracies"] == 1.0 and math.isfinite(result.metrics["train_loss"])
    assert config.load_config(CONFIGS[stage], out / "config.yaml") == cfg


def test_reference_free_config_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="gama: unknown key. Did you mean 'gamma'"):
        make_cfg("simpo", tmp_path, tiny_model_dir, "gama=0.3")
    with pytest.raises(ConfigError, match="trainer_overrides.simpo_gamma: set by align; use gamma instead"):
        make_cfg("simpo", tmp_path, tiny_model_dir, "trainer_overrides={simpo_gamma: 0.3}")
    with pytest.raises(ConfigError, match="trainer_overrides.loss_type: this stage trains SimPO's loss"):
        make_cfg("simpo", tmp_path, tiny_model_dir, "trainer_overrides={loss_type: hinge}")
    with pytest.raises(ConfigError, match="not a field of trl.experimental.orpo.ORPOConfig. Did you mean "
                                          "'max_completion_length'"):
        make_cfg("orpo", tmp_path, tiny_model_dir, "trainer_overrides={max_completion_lenght: 8}")
    with pytest.raises(ConfigError, match="beta: must be > 0, got 0.0"):
        make_cfg("orpo", tmp_path, tiny_model_dir, "beta=0.0")
    with pytest.raises(ConfigError, match="this is a 'orpo' config"):
        path = tmp_path / "orpo.yaml"
        config.save_config(make_cfg("orpo", tmp_path, tiny_model_dir), tmp_path)
        (tmp_path / "config.yaml").rename(path)
        stages.load("simpo", path)
