"""The same SFT or DPO work as `align`, written as a plain TRL script, for side-by-side timing (compare.py).

Logs each optimizer step's wall clock and input tokens seen to <out>/steps.jsonl, the way align writes
metrics.jsonl, so both are timed from the same trainer callback.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import trl
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback


class StepLog(TrainerCallback):
    def __init__(self, path: Path):
        self.file = path.open("w")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.file.write(json.dumps({"step": state.global_step, "time": time.time(), **logs,
                                        "num_input_tokens_seen": state.num_input_tokens_seen}) + "\n")
            self.file.flush()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["sft", "dpo"])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lora", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.data, split="train")
    common = dict(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                  learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                  report_to=[], bf16=False, use_cpu=not torch.cuda.is_available(), max_length=args.max_length,
                  include_num_input_tokens_seen=True, disable_tqdm=True)
    peft_config = None
    if args.lora:
        import peft

        peft_config = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                      task_type="CAUSAL_LM")
    if args.stage == "sft":
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config, callbacks=[StepLog(out / "steps.jsonl")])
    else:
        trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common, beta=0.1), train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config, callbacks=[StepLog(out / "steps.jsonl")])
    trainer.train()


if __name__ == "__main__":
    main()
