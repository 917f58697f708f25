"""Canonical rows feed TRL's own data preparation unchanged: its helpers and its trainers' dataset pipelines.

The only data_formats test that imports torch/trl; everything else stays torch-free.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data_formats import load_source

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"

trl = pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def canonical_rows(shared_data) -> dict[str, list[dict]]:
    """A few rows of every kind and shape, from the example files and real data."""
    return {
        "sft messages": load_source(str(EXAMPLES / "sft_chat.jsonl"), "sft").rows[:3],
        "sft tools": [r for r in load_source(str(shared_data / "llama-factory/glaive_toolcall_en_demo.json"),
                                             "sft").rows if "tools" in r][:2],
        "sft prompt-completion": [{"prompt": [{"role": "user", "content": "Hi"}],
                                   "completion": [{"role": "assistant", "content": "Hello"}]}],
        "preference": load_source(str(EXAMPLES / "preference.jsonl"), "preference").rows[:3],
        "preference hh": load_source(str(shared_data / "hh-rlhf/harmless-base/test.jsonl"), "preference",
                                     on_error="skip").rows[:3],
        "kto": load_source(str(shared_data / "llama-factory/kto_en_demo.json"), "kto").rows[:3],
        "prompt": load_source(str(EXAMPLES / "prompts.jsonl"), "prompt").rows[:3],
        "prompt from preference": load_source(str(shared_data / "llama-factory/dpo_en_demo.json"), "prompt").rows[:3],
    }


def test_trl_data_utils_accept_every_kind(shared_data, tokenizer):
    from trl.data_utils import apply_chat_template, is_conversational, maybe_extract_prompt

    for name, rows in canonical_rows(shared_data).items():
        assert rows, name
        for row in rows:
            assert is_conversational(row), name
            assert maybe_extract_prompt(row) == row, name  # explicit prompts: nothing for TRL to extract
            rendered = apply_chat_template(row, tokenizer, tools=row.get("tools"))
            assert all(isinstance(v, str) and v for k, v in rendered.items() if k != "label"), name
            if "prompt" in row and len(rendered) > 1:
                assert rendered["prompt"].endswith("<|im_start|>assistant\n"), name


@pytest.mark.slow  # 2-4 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_dpo_and_sft_trainers_prepare_canonical_rows(tiny_model_dir, tokenizer, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM

    common = {"output_dir": str(tmp_path), "report_to": [], "use_cpu": True, "bf16": False, "max_steps": 1,
              "per_device_train_batch_size": 2}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    preference = datasets.Dataset.from_list(load_source(str(EXAMPLES / "preference.jsonl"), "preference").rows[:4])
    dpo = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common), train_dataset=preference,
                         processing_class=tokenizer)
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dpo.train_dataset.column_names)
    assert dpo.train_dataset[0]["prompt_ids"][-3:] == tokenizer("<|im_start|>assistant\n")["input_ids"][-3:]
    dpo.train()
    assert dpo.state.global_step == 1

    chats = datasets.Dataset.from_list(load_source(str(EXAMPLES / "sft_chat.jsonl"), "sft").rows[:4])
    sft = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=chats, processing_class=tokenizer)
    assert "input_ids" in sft.train_dataset.column_names
    assert tokenizer.decode(sft.train_dataset[0]["input_ids"]).startswith("<|im_start|>user\nHow long")
