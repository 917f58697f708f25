"""A reward model for HH-RLHF with its top blocks trained: the frozen lower blocks run once per pair and are cached.

Two steps, so the frozen part runs once:

    python examples/hh_rlhf_reward_top.py cache --out runs/hh_top   # the lower blocks' states, every token (resumable)
    python examples/hh_rlhf_reward_top.py train --out runs/hh_top   # the top blocks + score, best on validation; export

The pairs, the held-out set and the left truncation are those of `examples/hh_rlhf_reward_head.py` (its `split` and
`pair_ids`), so both recipes are scored on the same held-out pairs. A head on frozen features can only weigh what the
frozen blocks already computed; trained top blocks can compute what the preference needs from prompt and reply.
`cache` keeps every token's state after block --block (fp16, 1.1 GB for the 3,638 pairs); `train` runs only the
next --blocks blocks, the final norm and the score layer on them. It starts from the pretrained
blocks with a Bradley-Terry logistic head fitted on their output, trains on the training pairs minus a validation
set (whole opening-question groups, as the held-out set), keeps the state that scores best on validation, then scores
the held-out pairs once beside the length heuristics and writes a standard sequence classifier: the pretrained lower
blocks, the trained top blocks, norm and score (docs/results_hh_rlhf.md has the figures and the time).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from functools import partial
from pathlib import Path

import torch
from hh_rlhf_reward_head import (
    by_source,
    classifier_from,
    criterion,
    fit_head,
    pair_arguments,
    pair_ids,
    run_step,
    save_classifier,
    shared_prefix,
    split,
    standardise,
    write_pairs,
)
from hh_rlhf_split import opening

from align import models
from align.eval import baselines, metrics
from align.sections import ModelConfig

SHARD = 100


def lower_trunk(model, block: int):
    """`model.model` cut after `block` blocks, without the final norm: it returns the residual stream there."""
    trunk = copy.deepcopy(model.model)
    trunk.layers = trunk.layers[:block]
    trunk.norm = torch.nn.Identity()
    return trunk


def run_pair(trunk, prefix: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, key: str
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The outputs over the prefix and over each side's own tokens. The prefix runs once; its cache is cut back to it
    for the second side. `key` names how tokens are given: `input_ids` to the lower trunk, `inputs_embeds` to the top.
    """
    if len(prefix):
        out = trunk(**{key: prefix[None]}, use_cache=True)
        head, cache = out.last_hidden_state[0], out.cache
    else:
        head, cache = torch.zeros(0, trunk.config.hidden_size), None
    sides = []
    for side in (chosen, rejected):
        sides.append(trunk(**{key: side[None]}, cache=cache, use_cache=cache is not None).last_hidden_state[0])
        if cache is not None:
            cache.crop(-len(side))
    return head, sides[0], sides[1]


def validation_groups(train: list[dict], size: int, seed: int = 1) -> list[str]:
    """Whole opening-question groups of the training pairs until they hold `size` pairs."""
    counts: dict[str, int] = {}
    for row in train:
        counts[opening(row)] = counts.get(opening(row), 0) + 1
    order = sorted(counts)
    random.Random(seed).shuffle(order)
    chosen, total = [], 0
    for key in order:
        if total >= size:
            break
        chosen.append(key)
        total += counts[key]
    return chosen


def cache(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    held, train = split(args.data, args.held_out)
    validation = set(validation_groups(train, args.validation))
    rows = [{**r, "split": "held_out"} for r in held] + [
        {**r, "split": "validation" if opening(r) in validation else "train"} for r in train]
    cfg = ModelConfig(name_or_path=args.model, dtype="fp32")
    path = models.resolve_path(args.model)
    tokenizer = models.load_tokenizer(cfg, path)
    trunk = lower_trunk(models.frozen(models.load_causal_lm(cfg, path)), args.block)
    listed, settings_file, shards = args.out / "rows.jsonl", args.out / "cache.json", args.out / "states"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    settings = {"model": str(path), "block": args.block, "max_tokens": args.max_tokens, "pairs": len(rows)}
    if listed.exists() and (listed.read_text("utf-8") != text or
                            json.loads(settings_file.read_text("utf-8")) != settings):
        raise SystemExit(f"{args.out} was cached with other settings; remove it or choose another --out")
    listed.write_text(text, "utf-8")
    settings_file.write_text(json.dumps(settings, indent=2) + "\n", "utf-8")
    write_pairs(args.out, [r for r in rows if r["split"] == "train"], held)
    shards.mkdir(exist_ok=True)
    done = len(list(shards.glob("*.pt"))) * SHARD  # a shard is written whole or not at all
    started, start_at, part = time.perf_counter(), done, []
    for i in range(done, len(rows)):
        chosen, rejected = pair_ids(tokenizer, rows[i], args.max_tokens)
        shared = shared_prefix(chosen, rejected)
        with torch.no_grad():
            states = run_pair(trunk, torch.tensor(chosen[:shared], dtype=torch.long), torch.tensor(chosen[shared:]),
                              torch.tensor(rejected[shared:]), "input_ids")
        part.append(tuple(s.half() for s in states))
        if len(part) == SHARD or i + 1 == len(rows):
            save_whole(part, shards / f"{i // SHARD:05d}.pt")
            part = []
            rate = (time.perf_counter() - started) / (i + 1 - start_at)
            print(f"{i + 1}/{len(rows)} pairs, {rate:.2f} s per pair, ETA {rate * (len(rows) - i - 1) / 60:.0f} min",
                  flush=True)


def top_blocks(model, block: int, blocks: int):
    """Blocks `block`+1 .. `block`+`blocks` and the final norm as a model that reads the lower trunk's states."""
    top = copy.deepcopy(model.model)
    top.layers = top.layers[block:block + blocks]
    for i, layer in enumerate(top.layers):
        layer.self_attn.layer_idx = i  # the cache holds only these blocks
    top.config.num_hidden_layers = blocks
    top.embed_tokens = None  # the cached states are its input
    top.requires_grad_(True)
    return top


class TopReward(torch.nn.Module):
    """The top blocks + a score layer: a reward per side of a cached pair, read at each side's last token."""

    def __init__(self, model, block: int, blocks: int):
        super().__init__()
        self.top = top_blocks(model, block, blocks)
        self.score = torch.nn.Linear(model.config.hidden_size, 1, bias=False)

    def eos_states(self, pair: tuple[torch.Tensor, ...]) -> torch.Tensor:
        _, chosen, rejected = run_pair(self.top, *(s.float() for s in pair), "inputs_embeds")
        return torch.stack([chosen[-1], rejected[-1]])

    def forward(self, pair: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.score(self.eos_states(pair)).squeeze(-1)


def load_cache(out: Path) -> tuple[list[dict], list[tuple[torch.Tensor, ...]], dict]:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text("utf-8").splitlines()]
    states = [pair for shard in sorted((out / "states").glob("*.pt")) for pair in torch.load(shard)]
    if len(states) < len(rows):
        raise SystemExit(f"{out}: states for {len(states)} of {len(rows)} pairs; run cache again to finish")
    return rows, states, json.loads((out / "cache.json").read_text("utf-8"))


def scores(model: TopReward, pairs: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(pair) for pair in pairs]) if pairs else torch.zeros(0, 2)


def validate(model: TopReward, pairs: list[tuple[torch.Tensor, ...]], sources: list[str]) -> dict[str, float]:
    """The mean of the per-source accuracies (the head recipe's criterion) and the mean loss, on validation pairs."""
    got = scores(model, pairs)
    return {"validation": criterion("mean", by_source(got[:, 0] > got[:, 1], sources)),
            "validation_loss": torch.nn.functional.softplus(got[:, 1] - got[:, 0]).mean().item()}


def rank(entry: dict) -> tuple[float, float]:
    """Better validation accuracy first; of equal ones, the lower loss."""
    return entry["validation"], -entry["validation_loss"]


def warm_start(model: TopReward, pairs: list[tuple[torch.Tensor, ...]], l2: float) -> None:
    """The score layer starts as the Bradley-Terry logistic head fitted on the pretrained top blocks' output."""
    with torch.no_grad():
        feats = torch.stack([model.eos_states(pair) for pair in pairs])
    mean, std = standardise(feats)
    with torch.no_grad():  # the offset `mean` is the same for both sides of a pair, so it is dropped
        model.score.weight.copy_((fit_head((feats - mean) / std, l2) / std).unsqueeze(0))


def pair_loss(score: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(chosen - rejected)."""
    return torch.nn.functional.softplus(score[1] - score[0])


def save_whole(value, path: Path) -> None:
    """Written beside `path` and moved over it, so a kill mid-write leaves the previous file."""
    torch.save(value, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def trained_state(model: TopReward) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(args: argparse.Namespace) -> None:
    rows, states, settings = load_cache(args.out)
    part = {name: [i for i, r in enumerate(rows) if r["split"] == name] for name in ("train", "validation", "held_out")}
    sources = {name: [rows[i]["subset"] for i in index] for name, index in part.items()}
    pairs = {name: [states[i] for i in index] for name, index in part.items()}
    cfg = ModelConfig(name_or_path=settings["model"], dtype="fp32")
    base = models.load_causal_lm(cfg, settings["model"])
    torch.manual_seed(args.seed)
    model = TopReward(base, settings["block"], args.blocks)
    checkpoint, best_file = args.out / "last.pt", args.out / "best.pt"
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    started = time.perf_counter()
    if checkpoint.exists():  # continue a killed run where its last evaluation left it
        saved = torch.load(checkpoint)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        first, position, history = saved["epoch"], saved["position"], saved["history"]
        print(f"continuing at epoch {first + 1}, pair {position}", flush=True)
    else:
        warm_start(model, pairs["train"], args.l2)
        history = [{"epoch": 0.0, **validate(model, pairs["validation"], sources["validation"])}]
        save_whole(trained_state(model), best_file)
        first, position = 0, 0
        print(f"pretrained blocks + fitted head ({time.perf_counter() - started:.0f} s): "
              f"validation {history[0]['validation']:.3f}", flush=True)
    total = args.epochs * len(pairs["train"])
    for epoch in range(first, args.epochs):
        order = list(range(len(pairs["train"])))
        random.Random(args.seed + epoch).shuffle(order)  # the same order again when a run continues
        model.train()
        clock, clock_at = time.perf_counter(), position
        while position < len(order):
            batch = order[position:position + args.batch]
            loss = sum(pair_loss(model(pairs["train"][i])) for i in batch) / len(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            position += len(batch)
            if position % args.eval_every < args.batch or position == len(order):
                history.append({"epoch": epoch + position / len(order),
                                **validate(model, pairs["validation"], sources["validation"])})
                if rank(history[-1]) > max(map(rank, history[:-1])):
                    save_whole(trained_state(model), best_file)
                save_whole({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "position": position, "history": history}, checkpoint)
                rate = (time.perf_counter() - clock) / (position - clock_at)
                left = total - epoch * len(order) - position
                print(f"epoch {history[-1]['epoch']:.2f}: loss {loss.item():.3f}, "
                      f"validation {history[-1]['validation']:.3f}, {rate:.2f} s per pair, "
                      f"ETA {rate * left / 60:.0f} min", flush=True)
        position = 0
    train_seconds = time.perf_counter() - started
    best = max(history, key=rank)
    model.load_state_dict(torch.load(best_file))
    model.eval()
    held = [rows[i] for i in part["held_out"]]
    got = scores(model, pairs["held_out"])
    name = f"top {args.blocks} blocks trained, epoch {best['epoch']:.2f}"
    rankings = {name: baselines.outcomes(got[:, 0].tolist(), got[:, 1].tolist()),
                "longer reply": baselines.length_outcomes(held, longer=True),
                "shorter reply": baselines.length_outcomes(held, longer=False)}
    table = baselines.table(rankings, sources["held_out"], partial(metrics.bootstrap_ci, seed=0))
    print(baselines.markdown(table, [name]))
    model_dir = export(settings["model"], settings["block"], model, args.out / "reward_model")
    result = {"block": settings["block"], "blocks": args.blocks, "best": best, "history": history,
              "train_pairs": len(part["train"]), "validation_pairs": len(part["validation"]),
              "train_seconds": round(train_seconds), "held_out": table, "reward_model": str(model_dir),
              "max_tokens": settings["max_tokens"]}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(f"reward model: {model_dir}")


def export(base: str, block: int, model: TopReward, out: Path) -> Path:
    """The pretrained blocks up to `block`, the trained top blocks, norm and score, saved as a sequence classifier."""
    classifier, tokenizer = classifier_from(base, block + len(model.top.layers))
    for i, layer in enumerate(model.top.layers):
        classifier.model.layers[block + i].load_state_dict(layer.state_dict())
    classifier.model.norm.load_state_dict(model.top.norm.state_dict())
    return save_classifier(classifier, tokenizer, model.score.weight.detach(), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    step = steps.add_parser("cache", help="the lower blocks' states for every token of every pair; resumable")
    pair_arguments(step)
    step.add_argument("--validation", type=int, default=300, help="validation pairs taken from training, whole groups")
    step.add_argument("--block", type=int, default=18, help="cache the states after this block; train the ones above")
    step = steps.add_parser("train", help="the top blocks + score on the cached states; export the best")
    step.add_argument("--out", type=Path, required=True)
    step.add_argument("--blocks", type=int, default=3, help="how many blocks above the cached one to train")
    step.add_argument("--epochs", type=int, default=2)
    step.add_argument("--lr", type=float, default=3e-5)
    step.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    step.add_argument("--l2", type=float, default=0.1, help="L2 of the logistic head the score layer starts from")
    step.add_argument("--eval-every", type=int, default=500, help="training pairs between validation scores")
    step.add_argument("--seed", type=int, default=0)
    run_step(parser, {"cache": cache, "train": train})


if __name__ == "__main__":
    main()
