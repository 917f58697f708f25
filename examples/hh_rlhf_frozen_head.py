"""A linear reward head on frozen model features, measured on HH-RLHF against the length heuristics per source.

The reward stage with every block frozen trains only its score head, which reads the final hidden state at the
reply's EOS token; computing those states once makes each epoch free. This script does exactly that on the
helpful-base and harmless-base test files as they come (no length filter): whole conversations, grouped by opening
question, are held out first (401 pairs), 800 of the rest train the head. Prompt + reply are cut to their last
--max-tokens tokens, so the reply and its EOS always stay. It prints the held-out accuracy beside the longer-reply and
shorter-reply heuristics with 95% intervals, per source (docs/results_hh_rlhf.md has the figures and the time).

    python examples/hh_rlhf_frozen_head.py --train 800 --held-out 400
"""

from __future__ import annotations

import argparse
import random
import re
import time
from functools import partial
from pathlib import Path

import torch

import data_formats
from align import chat, models
from align.eval import baselines, metrics
from align.sections import ModelConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"
SUBSETS = ("helpful-base", "harmless-base")
HEAD = "linear head on frozen EOS features"


def opening(row: dict) -> str:
    first = next(m["content"] for m in row["prompt"] if m["role"] == "user")
    return re.sub(r"[\W_]+", " ", first.lower()).strip()


def split(held_out: int, train: int) -> tuple[list[dict], list[dict]]:
    """Whole opening-question groups to the held-out set first, then a seeded sample of the rest for training."""
    groups: dict[str, list[dict]] = {}
    for subset in SUBSETS:
        for row in data_formats.load_source(str(SHARED / subset / "test.jsonl"), "preference", on_error="skip").rows:
            if row["chosen"] != row["rejected"]:
                groups.setdefault(opening(row), []).append({**row, "subset": subset})
    order = sorted(groups)
    random.Random(0).shuffle(order)
    held, rest = [], []
    for key in order:
        (held if len(held) < held_out else rest).extend(groups[key])
    random.Random(1).shuffle(rest)
    return held, rest[:train]


def features(model, tokenizer, rows: list[dict], max_tokens: int, batch_size: int) -> torch.Tensor:
    """(pairs, 2, hidden): the final hidden state at the EOS of the chosen and of the rejected reply."""
    seqs = [tokenizer(chat.reward_text(tokenizer, row["prompt"], row[side]), add_special_tokens=False)["input_ids"]
            [-max_tokens:] for row in rows for side in ("chosen", "rejected")]
    out = torch.zeros(len(seqs), model.config.hidden_size)
    by_length = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    started = time.perf_counter()
    for start in range(0, len(seqs), batch_size):
        idx = by_length[start:start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, :len(seqs[i])], mask[row, :len(seqs[i])] = torch.tensor(seqs[i]), 1
        with torch.no_grad():
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        out[idx] = hidden[torch.arange(len(idx)), mask.sum(1) - 1]
        print(f"\r{start + len(idx)}/{len(seqs)} sequences, {time.perf_counter() - started:.0f} s", end="", flush=True)
    print()
    return out.view(len(rows), 2, -1)


def fit_head(train: torch.Tensor, l2: float) -> torch.Tensor:
    """Bradley-Terry logistic regression on the standardised features: -log sigmoid(s_chosen - s_rejected)."""
    weight = torch.zeros(train.shape[-1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=200)

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        scores = train @ weight
        value = torch.nn.functional.softplus(-(scores[:, 0] - scores[:, 1])).mean() + l2 * weight.pow(2).sum() / 2
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="alias, dir or hub id")
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--held-out", type=int, default=400, help="held-out pairs, whole groups (a few more)")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--l2", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    models.configure_threads(0)
    cfg = ModelConfig(name_or_path=args.model, dtype="fp32")
    path = models.resolve_path(args.model)
    tokenizer = models.load_tokenizer(cfg, path)
    model = models.frozen(models.load_causal_lm(cfg, path))
    held, train = split(args.held_out, args.train)
    held_features, train_features = (features(model, tokenizer, rows, args.max_tokens, args.batch_size)
                                     for rows in (held, train))
    flat = train_features.reshape(-1, train_features.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    weight = fit_head((train_features - mean) / std, args.l2)
    scores = ((held_features - mean) / std) @ weight
    rankings = {HEAD: baselines.outcomes(scores[:, 0].tolist(), scores[:, 1].tolist()),
                "longer reply": baselines.length_outcomes(held, longer=True),
                "shorter reply": baselines.length_outcomes(held, longer=False)}
    table = baselines.table(rankings, [row["subset"] for row in held], partial(metrics.bootstrap_ci, seed=0))
    print(baselines.markdown(table, [HEAD]))


if __name__ == "__main__":
    main()
