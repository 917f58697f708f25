"""`align export` on tiny Llama models: a full model, a LoRA adapter and stacked sft + dpo adapters, each to hf and to
GGUF (f16, q8_0), checked against the source; the merged weights equal the hand-computed merge; unsupported models
and occupied output dirs are refused before anything is written; the checker fails on corrupted exports."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import build_tiny_tokenizer

from align import cli, models
from align.sections import ModelConfig
from align.use import gguf_file, verify
from align.use import source as sources

Q_PROJ = "model.layers.1.self_attn.q_proj.weight"


def export(args: list[str]) -> int:
    """`align export ARGS` on one thread (tiny models: two threads on a shared 2-core machine wait on each other)."""
    return cli.main(["export", *args, "--num-threads", "1"])


def _lora(model, seed: int, out, rank: int = 4):
    """Save a LoRA adapter on every linear layer of `model`, B made non-zero as after training."""
    import peft

    torch.manual_seed(seed)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                         task_type="CAUSAL_LM"))
    for name, param in wrapped.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.3)
    wrapped.save_pretrained(out)
    return out


def _delta(adapter_dir, layer: str) -> torch.Tensor:
    """scale * B @ A of one layer, read from the adapter files (what merging must add to the weight)."""
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    stem = "base_model.model." + layer.removesuffix(".weight")
    return cfg["lora_alpha"] / cfg["r"] * weights[f"{stem}.lora_B.weight"] @ weights[f"{stem}.lora_A.weight"]


@pytest.fixture(scope="module")
def sources_dirs(tmp_path_factory, tiny_model_dir):
    """{"full": the tiny model, "lora": an sft adapter on it, "stacked": a dpo adapter whose base is that adapter}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tmp_path_factory.mktemp("export-sources")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sft = _lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), 3, tmp / "sft")
    tokenizer.save_pretrained(sft)
    dpo = _lora(models.load_causal_lm(ModelConfig(name_or_path=str(sft))), 4, tmp / "dpo", rank=2)
    tokenizer.save_pretrained(dpo)
    assert models.adapter_base(dpo) == str(sft.resolve())  # stacked: the dpo adapter's base is the sft adapter
    return {"full": tiny_model_dir, "lora": sft, "stacked": dpo}


def expected_q_proj(dirs, name: str) -> torch.Tensor:
    weight = load_file(str(dirs["full"] / "model.safetensors"))[Q_PROJ]
    if name in ("lora", "stacked"):
        weight = weight + _delta(dirs["lora"], Q_PROJ)
    if name == "stacked":
        weight = weight + _delta(dirs["stacked"], Q_PROJ)
    return weight


@pytest.mark.parametrize("name", ["full", "lora", "stacked"])
def test_hf_export_is_the_merged_model_and_passes_its_check(name, sources_dirs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = tmp_path / "hf"
    assert export([str(sources_dirs[name]), "--format", "hf", "--out", str(out)]) == 0
    assert "export check passed: greedy token agrees at 100.0%" in capsys.readouterr().out
    record = json.loads((out / "export.json").read_text())
    check = record["verification"]
    assert check["passed"] and check["greedy_agreement"] == 1.0 and check["max_abs_logit_diff"] <= check["tolerance"]
    assert check["positions"] > 50 and check["tokenizer_matches"] and check["chat_template_matches"]
    exported = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    torch.testing.assert_close(exported.state_dict()[Q_PROJ], expected_q_proj(sources_dirs, name))
    assert not (out / "adapter_config.json").exists()
    generation = GenerationConfig.from_pretrained(out)
    assert (generation.eos_token_id, generation.pad_token_id) == (2, 0)  # <|im_end|> ends a turn; pad is <pad>
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "# license:" in card and "greedy token agrees at 100.0%" in card


def test_hf_export_in_another_dtype(sources_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    assert export([str(sources_dirs["lora"]), "--format", "hf", "--dtype", "bf16", "--out", str(out)]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert json.loads((out / "export.json").read_text())["verification"]["required_agreement"] == 0.95


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
@pytest.mark.parametrize("name", ["full", "lora", "stacked"])
def test_gguf_export_reads_back_as_the_merged_model(name, quant, sources_dirs, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    out = tmp_path / "gguf"
    assert export([str(sources_dirs[name]), "--format", "gguf", "--quant", quant, "--out", str(out)]) == 0
    check = json.loads((out / "export.json").read_text())["verification"]
    assert check["passed"] and check["greedy_agreement_outside_ties"] >= (1.0 if quant == "f16" else 0.95)
    assert (check["max_abs_logit_diff"] <= check["tolerance"]) if quant == "f16" else check["tolerance"] is None
    path = out / gguf_file.file_name(quant)
    reader = gguf.GGUFReader(path)
    fields = {name: reader.fields[name].contents() for name in ("general.architecture", "tokenizer.chat_template",
                                                                 "tokenizer.ggml.eos_token_id")}
    assert fields["general.architecture"] == "llama" and "<|im_start|>" in fields["tokenizer.chat_template"]
    assert fields["tokenizer.ggml.eos_token_id"] == 2
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.1.attn_q.weight"] == quant.upper() and kinds["blk.1.attn_norm.weight"] == "F32"
    reread = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name)  # transformers undoes the q/k permutation
    torch.testing.assert_close(reread.state_dict()[Q_PROJ], expected_q_proj(sources_dirs, name),
                               atol=0.02 if quant == "q8_0" else 2e-3, rtol=0)
    assert (out / "Modelfile").read_text().startswith(f"FROM ./{path.name}\nTEMPLATE")


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A causal LM of an architecture GGUF export does not support (hf export does)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2,
                               eos_token_id=tokenizer.eos_token_id)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize(("fmt", "model", "message"), [
    ("gguf", "gpt2", "GGUF export supports LlamaForCausalLM; this model is GPT2LMHeadModel"),
    ("gguf", "reward", "GGUF export supports LlamaForCausalLM; this model is LlamaForSequenceClassification"),
    ("hf", "reward", "hf export supports causal language models (those AutoModelForCausalLM loads"),
])
def test_unsupported_architecture_is_refused_before_anything_is_written(fmt, model, message, tmp_path, tiny_gpt2_dir,
                                                                        tiny_reward_model_dir, capsys):
    out = tmp_path / "out"
    path = {"gpt2": tiny_gpt2_dir, "reward": tiny_reward_model_dir}[model]
    assert export([str(path), "--format", fmt, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_gpt2_still_exports_to_hf(tiny_gpt2_dir, tmp_path):
    assert export([str(tiny_gpt2_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0


def test_an_occupied_output_dir_is_refused(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert export([str(tiny_model_dir), "--format", "gguf", "--out", str(tmp_path / "out")]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def _source(path):
    tokenizer, model = sources.load(sources.resolve(str(path)))
    return model, tokenizer


def test_check_fails_on_a_corrupted_hf_export(sources_dirs, tmp_path):
    out = tmp_path / "hf"
    assert export([str(sources_dirs["lora"]), "--format", "hf", "--out", str(out)]) == 0
    weights = load_file(str(out / "model.safetensors"))
    weights[Q_PROJ] = weights[Q_PROJ] * 1.5  # one matrix off, as a half-applied merge would leave it
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    result = verify.verify(*_source(sources_dirs["lora"]), out, "hf", "fp32")
    assert not result.passed and result.max_abs_logit_diff > result.tolerance
    assert any("exceeds the tolerance" in problem for problem in result.problems)


def test_check_fails_on_a_gguf_without_the_rotary_permutation(sources_dirs, tmp_path, monkeypatch, capsys):
    """The classic GGUF conversion bug: q/k rows left in Hugging Face order. The command exits 2 and says so."""
    monkeypatch.setattr(gguf_file, "permute_rotary", lambda weights, heads: weights)
    out = tmp_path / "gguf"
    assert export([str(sources_dirs["full"]), "--format", "gguf", "--quant", "f32",
                     "--out", str(out)]) == 2
    assert "does not match its source" in capsys.readouterr().err
    check = json.loads((out / "export.json").read_text())["verification"]
    assert not check["passed"] and check["max_abs_logit_diff"] > check["tolerance"]


def test_a_pipeline_run_dir_stands_for_its_last_finished_policy_stage(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    for stage, finished in (("sft", "2026-01-01T10:00:00"), ("dpo", "2026-01-01T11:00:00"),
                            ("reward", "2026-01-01T12:00:00")):
        (run / stage).mkdir(parents=True)
        (run / stage / "config.yaml").write_text(f"stage: {stage}\nmodel:\n  name_or_path: x\n")
        (run / stage / "summary.json").write_text(json.dumps({"finished_at": finished}))
        (run / stage / "config.json").write_text("{}")
    assert sources.resolve(str(run)).path == str(run / "dpo")
    assert sources.resolve(str(tiny_model_dir)).path == str(tiny_model_dir)
