"""The same SFT, DPO, KTO, ORPO, SimPO, GRPO or RLOO work as `align`, written as a plain TRL script, for side-by-side
timing (compare.py).

Hyper-parameters are align's for the same config: where TRL's defaults differ (gradient checkpointing is on by
default in trl.SFTConfig and trl.DPOConfig, off in align), they are set here. KTO gets the rows `align kto` trains
on: each pair split into a desirable and an undesirable row, shuffled with align's default seed (42). GRPO and RLOO
score with examples/rewards.py:concise on the reply's text, as `align grpo` calls that rule. compare.py times the
steps from outside (compare_child.py), so this script adds no callback of its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

import torch
import trl
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["sft", "dpo", "kto", "orpo", "simpo", "grpo", "rloo"])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--num-generations", type=int, default=2, help="grpo / rloo: completions per prompt")
    p.add_argument("--max-completion-length", type=int, default=32, help="grpo / rloo")
    p.add_argument("--beta", type=float, default=0.04, help="grpo / rloo: KL coefficient")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # align's dtype "auto": bf16 on GPUs that support it, fp32 on CPU.
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if bf16 else torch.float32)
    dataset = load_dataset("json", data_files=args.data, split="train")
    common = {"output_dir": str(out), "max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
              "learning_rate": args.lr, "lr_scheduler_type": "constant", "logging_steps": 1, "save_strategy": "no",
              "report_to": [], "bf16": bf16, "use_cpu": not torch.cuda.is_available(), "max_length": args.max_length,
              "include_num_input_tokens_seen": True, "disable_tqdm": True, "gradient_checkpointing": False}
    peft_config = None
    if args.lora:
        import peft

        peft_config = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                      task_type="CAUSAL_LM")
    if args.stage == "sft":
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config)
    elif args.stage == "dpo":
        trainer = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common, beta=0.1), train_dataset=dataset,
                                 processing_class=tokenizer, peft_config=peft_config)
    elif args.stage == "kto":
        rows = [{"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}
                for pair in dataset for side in ("chosen", "rejected")]
        random.Random(42).shuffle(rows)
        # No ref_model: TRL loads the frozen reference from the model's path (LoRA: the adapter disabled).
        trainer = trl.KTOTrainer(model=model, args=trl.KTOConfig(**common, beta=0.1),
                                 train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                 peft_config=peft_config)
    elif args.stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer = ORPOTrainer(model=model, args=ORPOConfig(**common, beta=0.1), train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config)
    elif args.stage in ("grpo", "rloo"):
        group = {"num_generations": args.num_generations, "max_completion_length": args.max_completion_length,
                 "temperature": 1.0, "beta": args.beta, "disable_dropout": True}
        del common["max_length"]  # not a field of trl.GRPOConfig / RLOOConfig
        config_class, trainer_class = ((trl.GRPOConfig, trl.GRPOTrainer) if args.stage == "grpo"
                                       else (trl.RLOOConfig, trl.RLOOTrainer))
        trainer = trainer_class(model=model, reward_funcs=concise_reward(), args=config_class(**common, **group),
                                train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        simpo = {"loss_type": "simpo", "cpo_alpha": 0.0, "beta": 2.0, "simpo_gamma": 0.5}
        trainer = CPOTrainer(model=model, args=CPOConfig(**common, **simpo), train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(out))  # align saves its final model too
    tokenizer.save_pretrained(out)


def concise_reward():
    """examples/rewards.py:concise as a TRL reward function on conversational completions."""
    spec = importlib.util.spec_from_file_location("rewards", Path(__file__).resolve().parents[1] / "examples" /
                                                  "rewards.py")
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)

    def concise(prompts, completions, **_):
        return rules.concise(prompts, ["\n".join(m["content"] for m in reply) for reply in completions])

    return concise


if __name__ == "__main__":
    main()
