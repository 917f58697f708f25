"""A reward model for HH-RLHF from frozen SmolLM2 features: one forward pass per pair, a linear head per depth.

Two steps, so the expensive one runs once:

    python examples/hh_rlhf_reward_head.py extract --out runs/hh_rm   # one forward pass per pair (see the docs)
    python examples/hh_rlhf_reward_head.py fit --out runs/hh_rm       # seconds: pick, fit, score, export

`extract` reads the helpful-base and harmless-base test files as they come (no length filter), groups pairs by their
opening question as `examples/hh_rlhf_split.py` does and deals whole groups to the held-out set first. Each reply is
scored where a reward model reads it, at its EOS (`chat.reward_text`); prompt + reply are cut to their last
--max-tokens tokens, so the reply and its EOS always stay and no pair becomes a tie by losing both replies. It
keeps the normalised hidden state at that EOS after every third block. The chosen and the rejected reply share
their prompt, which is run once and its cache reused for both replies. Progress is saved every 50 pairs, so a killed
run continues where it stopped.

`fit` chooses the depth and the L2 strength by 5-fold cross-validation on the training pairs only (folds keep an
opening question's pairs together), fits a Bradley-Terry logistic head at that depth, prints the held-out accuracy
per source beside the length heuristics with 95% intervals, and writes the model: the first blocks up to that depth,
the final norm and the head as the score layer, a standard sequence classifier that `align probe`, `align eval
--judge reward:DIR` and PPO's `reward_model` load (docs/results_hh_rlhf.md has the figures and the time).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from functools import partial
from pathlib import Path

import torch
from hh_rlhf_split import SHARED, SUBSETS, opening  # the same files, sources and grouping as the split script

import data_formats
from align import chat, models
from align.eval import baselines, metrics
from align.sections import ModelConfig

SAVE_EVERY = 50


def split(data: Path, held_out: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Whole opening-question groups to the held-out set until it has `held_out` pairs, the rest to training."""
    groups: dict[str, list[dict]] = {}
    for subset in SUBSETS:
        for row in data_formats.load_source(str(data / subset / "test.jsonl"), "preference", on_error="skip").rows:
            if row["chosen"] != row["rejected"]:
                groups.setdefault(opening(row), []).append({**row, "subset": subset})
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    held, train = [], []
    for key in order:
        (held if len(held) < held_out else train).extend(groups[key])
    return held, train


def pair_ids(tokenizer, row: dict, max_tokens: int) -> tuple[list[int], list[int]]:
    return tuple(tokenizer(chat.reward_text(tokenizer, row["prompt"], row[side]), add_special_tokens=False)
                 ["input_ids"][-max_tokens:] for side in ("chosen", "rejected"))


def eos_states(model, ids: list[int], layers: list[int], cache=None) -> torch.Tensor:
    """(layers, hidden): the normalised hidden state of the last token after each of `layers` blocks."""
    out = model.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=cache is not None,
                      output_hidden_states=True)
    last = len(model.model.layers)
    return torch.stack([out.hidden_states[n][0, -1] if n == last else model.model.norm(out.hidden_states[n][0, -1])
                        for n in layers])


def shared_prefix(chosen: list[int], rejected: list[int]) -> int:
    """Tokens both sides start with; each side keeps at least its last token, the one whose state is read."""
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    return min(shared, len(chosen) - 1, len(rejected) - 1)


def pair_features(model, chosen: list[int], rejected: list[int], layers: list[int]) -> torch.Tensor:
    """(2, layers, hidden). The common token prefix runs once; its cache is cut back to it for the second reply."""
    shared = shared_prefix(chosen, rejected)
    if shared == 0:
        return torch.stack([eos_states(model, ids, layers) for ids in (chosen, rejected)])
    prefix = model.model(input_ids=torch.tensor([chosen[:shared]]), use_cache=True)
    cache = prefix.cache
    first = eos_states(model, chosen[shared:], layers, cache)
    cache.crop(-(len(chosen) - shared))
    return torch.stack([first, eos_states(model, rejected[shared:], layers, cache)])


def extra_rows(data: Path, spec: str, held: list[dict]) -> list[dict]:
    """`SUBSET:N`: N seeded pairs of another hh-rlhf file for training only, none opening as a held-out pair does."""
    subset, _, count = spec.partition(":")
    unseen = {opening(r) for r in held}
    rows = [{**r, "subset": subset} for r in
            data_formats.load_source(str(data / subset / "test.jsonl"), "preference", on_error="skip").rows
            if r["chosen"] != r["rejected"] and opening(r) not in unseen]
    random.Random(3).shuffle(rows)
    return rows[:int(count)]


def write_pairs(out: Path, train: list[dict], held: list[dict]) -> None:
    """The training and held-out pairs as preference rows, for `align probe`, PPO's prompts and `align eval`."""
    for name, part in (("train_pairs.jsonl", train), ("held_out_pairs.jsonl", held)):
        (out / name).write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")},
                                                   ensure_ascii=False) + "\n" for r in part), "utf-8")


def extract(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    held, train = split(args.data, args.held_out)
    train += [r for spec in args.extra for r in extra_rows(args.data, spec, held)]
    rows = [{**r, "split": "held_out"} for r in held] + [{**r, "split": "train"} for r in train]
    cfg = ModelConfig(name_or_path=args.model, dtype="fp32")
    path = models.resolve_path(args.model)
    tokenizer = models.load_tokenizer(cfg, path)
    model = models.frozen(models.load_causal_lm(cfg, path))
    layers = list(range(args.every, len(model.model.layers) + 1, args.every))
    store, listed = args.out / "features.pt", args.out / "rows.jsonl"
    feats, done = torch.zeros(len(rows), 2, len(layers), model.config.hidden_size), 0
    if store.exists():  # continue, also after --extra added pairs at the end
        saved = torch.load(store)
        before = listed.read_text("utf-8").splitlines()[:saved["pairs"]]
        if saved["layers"] != layers or before != [json.dumps(r, ensure_ascii=False) for r in rows[:len(before)]]:
            raise SystemExit(f"{store} was made with other settings; remove it or choose another --out")
        feats[:saved["pairs"]], done = saved["features"], saved["done"]
    listed.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    write_pairs(args.out, train, held)
    started, start_at = time.perf_counter(), done
    for i in range(done, len(rows)):
        with torch.no_grad():
            feats[i] = pair_features(model, *pair_ids(tokenizer, rows[i], args.max_tokens), layers)
        if (i + 1) % SAVE_EVERY == 0 or i + 1 == len(rows):
            tmp = store.with_suffix(".tmp")
            torch.save({"layers": layers, "pairs": len(rows), "done": i + 1, "features": feats,
                        "model": str(path), "max_tokens": args.max_tokens}, tmp)
            tmp.replace(store)
            rate = (time.perf_counter() - started) / (i + 1 - start_at)
            print(f"{i + 1}/{len(rows)} pairs, {rate:.2f} s per pair, ETA {rate * (len(rows) - i - 1) / 60:.0f} min",
                  flush=True)


def load_features(out: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text("utf-8").splitlines()]
    saved = torch.load(out / "features.pt")
    if saved["done"] < len(rows):
        raise SystemExit(f"{out}: features for {saved['done']} of {len(rows)} pairs; run extract again to finish")
    return rows, saved


def fit_head(train: torch.Tensor, l2: float) -> torch.Tensor:
    """Bradley-Terry logistic regression, (pairs, 2, hidden) -> weight: -log sigmoid(s_chosen - s_rejected) + L2."""
    diff = train[:, 0] - train[:, 1]
    weight = torch.zeros(train.shape[-1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.softplus(-(diff @ weight)).mean() + l2 * weight.pow(2).sum() / 2
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach()


def standardise(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = train.reshape(-1, train.shape[-1])
    return flat.mean(0), flat.std(0) + 1e-6


def per_source(correct: torch.Tensor, sources: list[str]) -> float:
    """The mean of the per-source accuracies, so neither source's length habit can carry the choice alone."""
    return sum(correct[[s == name for s in sources]].float().mean().item() for name in SUBSETS) / len(SUBSETS)


def cross_validate(feats: torch.Tensor, rows: list[dict], l2: float, folds: int) -> float:
    """Grouped k-fold accuracy on training pairs: each opening question's pairs stay in one fold."""
    order = sorted({opening(r) for r in rows})
    random.Random(2).shuffle(order)
    fold_of = {key: i % folds for i, key in enumerate(order)}
    fold = torch.tensor([fold_of[opening(r)] for r in rows])
    correct = torch.zeros(len(rows), dtype=torch.bool)
    for k in range(folds):
        mean, std = standardise(feats[fold != k])
        weight = fit_head((feats[fold != k] - mean) / std, l2)
        scores = ((feats[fold == k] - mean) / std) @ weight
        correct[fold == k] = scores[:, 0] > scores[:, 1]
    return per_source(correct, [r["subset"] for r in rows])


def fit(args: argparse.Namespace) -> None:
    rows, saved = load_features(args.out)
    layers, feats = saved["layers"], saved["features"]
    train_at = torch.tensor([r["split"] == "train" for r in rows])
    train_feats, held_feats = feats[train_at], feats[~train_at]
    train_rows = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "held_out"]
    started = time.perf_counter()
    grid = {(layer, l2): cross_validate(train_feats[:, :, i], train_rows, l2, args.folds)
            for i, layer in enumerate(layers) for l2 in args.l2}
    layer, l2 = max(grid, key=grid.get)
    print(f"cross-validation on {len(train_rows)} training pairs, mean of per-source accuracies "
          f"({time.perf_counter() - started:.0f} s):")
    for depth in layers:
        print(f"  after block {depth:2d}: " + "  ".join(f"L2 {c:g} {grid[depth, c]:.3f}" for c in args.l2))
    print(f"chosen: the state after block {layer}, L2 {l2:g}")

    index = layers.index(layer)
    mean, std = standardise(train_feats[:, :, index])
    weight = fit_head((train_feats[:, :, index] - mean) / std, l2)
    scores = ((held_feats[:, :, index] - mean) / std) @ weight
    name = f"reward head, block {layer}"
    rankings = {name: baselines.outcomes(scores[:, 0].tolist(), scores[:, 1].tolist()),
                "longer reply": baselines.length_outcomes(held, longer=True),
                "shorter reply": baselines.length_outcomes(held, longer=False)}
    table = baselines.table(rankings, [r["subset"] for r in held], partial(metrics.bootstrap_ci, seed=0))
    print(baselines.markdown(table, [name]))
    model_dir = export(saved["model"], layer, weight / std, args.out / "reward_model")
    result = {"layer": layer, "l2": l2, "cross_validation": {f"{d}/{c:g}": v for (d, c), v in grid.items()},
              "train_pairs": len(train_rows), "held_out": table, "reward_model": str(model_dir),
              "max_tokens": saved["max_tokens"]}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(f"reward model: {model_dir}")


def classifier_from(base: str, blocks: int):
    """A one-label sequence classifier of the base model's first `blocks` blocks, with their pretrained weights, and
    the base tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = ModelConfig(name_or_path=base, dtype="fp32")
    tokenizer = models.load_tokenizer(cfg, base)
    config = AutoConfig.from_pretrained(base, num_labels=1, num_hidden_layers=blocks,
                                        pad_token_id=tokenizer.pad_token_id)
    classifier = AutoModelForSequenceClassification.from_config(config)
    trunk = {k.removeprefix("model."): v for k, v in models.load_causal_lm(cfg, base).state_dict().items()
             if k.startswith("model.")}
    missing, unexpected = classifier.model.load_state_dict(trunk, strict=False)
    if missing or any(not k.startswith("layers.") for k in unexpected):
        raise SystemExit(f"the trunk does not fit the classifier: missing {missing}, unexpected {unexpected}")
    return classifier, tokenizer


def export(base: str, layer: int, weight: torch.Tensor, out: Path) -> Path:
    """The first `layer` blocks, the final norm and `weight` as the score layer, saved as a sequence classifier.

    The head was fitted on standardised features; `weight / std` reads the raw ones. The mean's offset is the same
    for both replies of a pair, so it is dropped (the score layer has no bias): scores shift by a constant.
    """
    classifier, tokenizer = classifier_from(base, layer)
    return save_classifier(classifier, tokenizer, weight, out)


def save_classifier(classifier, tokenizer, weight: torch.Tensor, out: Path) -> Path:
    """`weight` as the score layer; the classifier and the tokenizer saved to `out`."""
    with torch.no_grad():
        classifier.score.weight.copy_(weight.reshape(1, -1))
    classifier.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pair_arguments(step: argparse.ArgumentParser) -> None:
    """What the pairs are and how they are read: the same in every step that reads them."""
    step.add_argument("--out", type=Path, required=True)
    step.add_argument("--data", type=Path, default=SHARED, help="the hh-rlhf folder")
    step.add_argument("--model", default="smollm2-135m-instruct", help="alias, dir or hub id")
    step.add_argument("--held-out", type=int, default=600, help="held-out pairs, whole groups (a few more)")
    step.add_argument("--max-tokens", type=int, default=384)


def run_step(parser: argparse.ArgumentParser, steps: dict) -> None:
    """Parse the command line and run the step it names, on all cores."""
    args = parser.parse_args()
    models.configure_threads(0)
    steps[args.step](args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    ext = steps.add_parser("extract", help="one forward pass per pair; resumable")
    pair_arguments(ext)
    ext.add_argument("--every", type=int, default=3, help="keep the state after every N-th block")
    ext.add_argument("--extra", nargs="*", default=[], metavar="SUBSET:N",
                     help="more training pairs from another hh-rlhf file, e.g. helpful-rejection-sampled:1000")
    fitting = steps.add_parser("fit", help="choose, fit, score and export the head (seconds)")
    fitting.add_argument("--out", type=Path, required=True)
    fitting.add_argument("--l2", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0])
    fitting.add_argument("--folds", type=int, default=5)
    run_step(parser, {"extract": extract, "fit": fit})


if __name__ == "__main__":
    main()
