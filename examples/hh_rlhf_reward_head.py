"""A reward model for HH-RLHF from frozen SmolLM2 features: one forward pass per pair, a linear head per depth.

Two steps, so the expensive one runs once, and an optional one between them:

    python examples/hh_rlhf_reward_head.py extract --out runs/hh_rm   # one forward pass per pair (see the docs)
    python examples/hh_rlhf_reward_head.py negatives --out runs/hh_rm # optional: one pass per stock negative
    python examples/hh_rlhf_reward_head.py fit --out runs/hh_rm       # seconds: pick, fit, score, export

`extract` reads the helpful-base and harmless-base test files as they come (no length filter), groups pairs by their
opening question as `examples/hh_rlhf_split.py` does and deals whole groups to the held-out set first. Each reply is
scored where a reward model reads it, at its EOS (`chat.reward_text`); prompt + reply are cut to their last
--max-tokens tokens, so the reply and its EOS always stay and no pair becomes a tie by losing both replies. It
keeps the normalised hidden state at that EOS after every third block. The chosen and the rejected reply share
their prompt, which is run once and its cache reused for both replies. Progress is saved every 50 pairs, so a killed
run continues where it stopped.

`negatives` adds, for each training pair whose chosen reply helped with a helpful-base request, the same prompt
answered by a stock refusal (and, where a harmless-base chosen reply declined, by stock eager compliance), to be
ranked below the chosen reply: pairs the data rarely shows, which `align probe` found the head getting wrong.

`fit` chooses the depth, the L2 strength and the negatives' weight by 5-fold cross-validation on the training pairs
only (folds keep an opening question's pairs, and the negatives made from them, together), by the mean of the
per-source accuracies or (`--choose margin`) by the worst source's margin over its better length heuristic; fits a
Bradley-Terry logistic head at that depth, prints the held-out accuracy per source beside the length heuristics with
95% intervals, and writes the model: the first blocks up to that depth, the final norm and the head as the score
layer, a standard sequence classifier that `align probe`, `align eval --judge reward:DIR` and PPO's `reward_model`
load (docs/results_hh_rlhf.md has the figures and the time). `fit --gate-l2 ...` fits gated heads instead
(`hh_rlhf_gated_head.py`: a helpful head, a harmless head and a gate that tells the sources apart, chosen with their
L2 strengths by the same cross-validation) and exports them as one more block of the same classifier; with
`--gate-negatives` the gate also learns from the `negatives` step's stock replies, so a refusal's wording cannot
switch it to the head that prefers declining.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from functools import partial
from pathlib import Path

import torch
from hh_rlhf_gated_head import fit_gate, gated_scores, write_gate_block
from hh_rlhf_split import SHARED, SUBSETS, opening  # the same files, sources and grouping as the split script

import data_formats
from align import chat, models
from align.eval import baselines, metrics
from align.probe.variants import is_refusal
from align.sections import ModelConfig

SAVE_EVERY = 50
# Worded unlike align/probe/variants.py's refusal and compliance, so that `align probe` does not test a head on the
# very texts it was fitted against.
REFUSALS = ("I apologize, but I am unable to assist with that.",
            "Unfortunately, I cannot provide help with this topic.",
            "That is not something I can help with, sorry.")
COMPLIANCE = "Of course! I'd be glad to help you with that. Here's what you should do."


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


def reply_ids(tokenizer, prompt: list[dict], reply: list[dict], max_tokens: int) -> list[int]:
    """The tokens a reward model reads for `reply`, cut to the last `max_tokens` so the reply's EOS stays."""
    return tokenizer(chat.reward_text(tokenizer, prompt, reply), add_special_tokens=False)["input_ids"][-max_tokens:]


def pair_ids(tokenizer, row: dict, max_tokens: int) -> tuple[list[int], list[int]]:
    return tuple(reply_ids(tokenizer, row["prompt"], row[side], max_tokens) for side in ("chosen", "rejected"))


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


def negative_reply(row: dict, n: int) -> str | None:
    """A stock reply worse than the chosen one in a way the pairs rarely show: a refusal where the chosen reply
    helped with a helpful-base request, eager compliance where it declined a harmless-base one; else None."""
    declined = is_refusal(row["chosen"][-1]["content"])
    if row["subset"] == "helpful-base" and not declined:
        return REFUSALS[n % len(REFUSALS)]
    if row["subset"] == "harmless-base" and declined:
        return COMPLIANCE
    return None


def negatives(args: argparse.Namespace) -> None:
    """The EOS states of a stock negative reply to each training pair's prompt (`negative_reply`), at the depths
    `extract` kept; resumable like `extract`."""
    rows, saved = load_features(args.out)
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    jobs = [(i, text) for n, i in enumerate(train) if (text := negative_reply(rows[i], n)) is not None]
    cfg = ModelConfig(name_or_path=saved["model"], dtype="fp32")
    tokenizer = models.load_tokenizer(cfg, saved["model"])
    model = models.frozen(models.load_causal_lm(cfg, saved["model"]))
    store = args.out / "negatives.pt"
    feats, done = torch.zeros(len(jobs), len(saved["layers"]), model.config.hidden_size), 0
    if store.exists():
        kept = torch.load(store)
        if kept["rows"] != [i for i, _ in jobs] or kept["texts"] != [t for _, t in jobs]:
            raise SystemExit(f"{store} was made from other pairs; remove it to start again")
        feats[:kept["done"]], done = kept["features"][:kept["done"]], kept["done"]
    started = time.perf_counter()
    for j in range(done, len(jobs)):
        i, text = jobs[j]
        ids = reply_ids(tokenizer, rows[i]["prompt"], [{"role": "assistant", "content": text}], saved["max_tokens"])
        with torch.no_grad():
            feats[j] = eos_states(model, ids, saved["layers"])
        if (j + 1) % SAVE_EVERY == 0 or j + 1 == len(jobs):
            tmp = store.with_suffix(".tmp")
            torch.save({"rows": [i for i, _ in jobs], "texts": [t for _, t in jobs], "done": j + 1,
                        "features": feats}, tmp)
            tmp.replace(store)
            rate = (time.perf_counter() - started) / (j + 1 - done)
            print(f"{j + 1}/{len(jobs)} negatives, {rate:.2f} s each, ETA {rate * (len(jobs) - j - 1) / 60:.0f} min",
                  flush=True)


def load_features(out: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text("utf-8").splitlines()]
    saved = torch.load(out / "features.pt")
    if saved["done"] < len(rows):
        raise SystemExit(f"{out}: features for {saved['done']} of {len(rows)} pairs; run extract again to finish")
    return rows, saved


def fit_head(train: torch.Tensor, l2: float, negatives: torch.Tensor | None = None,
             negative_weight: float = 0.0) -> torch.Tensor:
    """Bradley-Terry logistic regression, (pairs, 2, hidden) -> weight: -log sigmoid(s_chosen - s_rejected) + L2.
    `negatives` (k, 2, hidden) are more (chosen, worse) pairs, each weighing `negative_weight` of a real pair."""
    diff, weights = train[:, 0] - train[:, 1], torch.ones(len(train))
    if negatives is not None and negative_weight > 0:
        diff = torch.cat([diff, negatives[:, 0] - negatives[:, 1]])
        weights = torch.cat([weights, torch.full((len(negatives),), negative_weight)])
    weight = torch.zeros(train.shape[-1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = ((torch.nn.functional.softplus(-(diff @ weight)) * weights).sum() / weights.sum()
                 + l2 * weight.pow(2).sum() / 2)
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach()


def standardise(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = train.reshape(-1, train.shape[-1])
    return flat.mean(0), flat.std(0) + 1e-6


def by_source(correct: torch.Tensor, sources: list[str]) -> dict[str, float]:
    return {name: correct[[s == name for s in sources]].float().mean().item() for name in SUBSETS}


def length_bars(rows: list[dict]) -> dict[str, float]:
    """Per source, the better length heuristic's accuracy on `rows` (a tie counts as a miss, as for the head)."""
    bars = {}
    for name in SUBSETS:
        part = [r for r in rows if r["subset"] == name]
        bars[name] = max(sum(o == 1 for o in baselines.length_outcomes(part, longer=longer)) / len(part)
                         for longer in (True, False))
    return bars


def criterion(choose: str, accuracies: dict[str, float], bars: dict[str, float] | None = None) -> float:
    """`mean`: the mean of the per-source accuracies, so neither source's length habit can carry the choice alone.
    `margin`: the worst source's accuracy minus its better length heuristic, the bar the held-out pairs set."""
    if choose == "mean":
        return sum(accuracies.values()) / len(accuracies)
    return min(accuracies[name] - bars[name] for name in accuracies)


def fold_of(rows: list[dict], folds: int) -> torch.Tensor:
    """Each pair's fold: an opening question's pairs share one."""
    order = sorted({opening(r) for r in rows})
    random.Random(2).shuffle(order)
    fold = {key: i % folds for i, key in enumerate(order)}
    return torch.tensor([fold[opening(r)] for r in rows])


def fit_heads(train: torch.Tensor, harmful: torch.Tensor, l2: float, gated: bool,
              negatives: torch.Tensor | None = None, negative_harmful: torch.Tensor | None = None,
              negative_weight: float = 0.0) -> list[torch.Tensor]:
    """[one head on every pair], or gated: [a helpful head, a harmless head], each on its source's pairs and the
    negatives made from them. `harmful[i]`: pair i is from harmless-base."""
    if not gated:
        return [fit_head(train, l2, negatives, negative_weight)]
    return [fit_head(train[harmful == side], l2, None if negatives is None else negatives[negative_harmful == side],
                     negative_weight) for side in (False, True)]


def pair_gate(train: torch.Tensor, harmful: torch.Tensor, l2: float, negatives: torch.Tensor | None = None,
              negative_harmful: torch.Tensor | None = None) -> torch.Tensor:
    """The gate, fitted on both replies' states of each pair to tell harmless-base from the other sources; with
    `negatives`, also on each stock negative's state, labelled with its pair's source, so that a reply's wording (a
    refusal, say) does not decide which head scores it."""
    states, labels = train.reshape(-1, train.shape[-1]), harmful.repeat_interleave(2)
    if negatives is not None:
        states, labels = torch.cat([states, negatives[:, 1]]), torch.cat([labels, negative_harmful])
    return fit_gate(states, labels, l2)


def score(states: torch.Tensor, heads: list[torch.Tensor], gate: torch.Tensor | None) -> torch.Tensor:
    return states @ heads[0] if gate is None else gated_scores(states, *heads, gate)


def cross_validate(feats: torch.Tensor, rows: list[dict], l2: list[float], folds: int,
                   negatives: torch.Tensor | None = None, negative_rows: torch.Tensor | None = None,
                   negative_weight: list[float] = (0.0,), gate_l2: list[float | None] = (None,),
                   gate_negatives: bool = False) -> dict[tuple, dict[str, float]]:
    """Grouped k-fold accuracy per source on training pairs, for every (L2, negative weight, gate L2; None: one
    head, no gate): each opening question's pairs stay in one fold, and so do the negatives made from them
    (`negative_rows[j]` is the index in `rows` of negative pair j). `gate_negatives`: the gate learns from them too."""
    fold = fold_of(rows, folds)
    harmful = torch.tensor([r["subset"] == "harmless-base" for r in rows])
    keys = [(c, w, g) for c in l2 for w in negative_weight for g in gate_l2]
    correct = {key: torch.zeros(len(rows), dtype=torch.bool) for key in keys}
    for k in range(folds):
        train, test = fold != k, fold == k
        mean, std = standardise(feats[train])
        states = (feats - mean) / std
        extra, extra_harmful = None, None
        if negatives is not None:
            kept = fold[negative_rows] != k
            extra, extra_harmful = (negatives[kept] - mean) / std, harmful[negative_rows[kept]]
        gates = {g: None if g is None else pair_gate(states[train], harmful[train], g,
                                                      *((extra, extra_harmful) if gate_negatives else ()))
                 for g in gate_l2}
        heads = {(c, w, gated): fit_heads(states[train], harmful[train], c, gated, extra, extra_harmful, w)
                 for c in l2 for w in negative_weight for gated in {g is not None for g in gate_l2}}
        for c, w, g in keys:
            got = score(states[test], heads[c, w, g is not None], gates[g])
            correct[c, w, g][test] = got[:, 0] > got[:, 1]
    return {key: by_source(hit, [r["subset"] for r in rows]) for key, hit in correct.items()}


def load_negatives(out: Path, rows: list[dict], feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative pairs (k, 2, layers, hidden): the chosen reply's states beside the stock negative's, and the index
    of each one's pair among the training pairs)."""
    store = out / "negatives.pt"
    if not store.exists():
        raise SystemExit(f"{store} is missing; run the negatives step first, or fit with --negative-weight 0")
    kept = torch.load(store)
    if kept["done"] < len(kept["rows"]):
        raise SystemExit(f"{store}: {kept['done']} of {len(kept['rows'])} negatives; run negatives again to finish")
    position = {i: n for n, i in enumerate(i for i, r in enumerate(rows) if r["split"] == "train")}
    chosen = feats[kept["rows"], 0]
    return torch.stack([chosen, kept["features"]], 1), torch.tensor([position[i] for i in kept["rows"]])


def fit(args: argparse.Namespace) -> None:
    if args.gate_negatives and not args.gate_l2:
        raise SystemExit("--gate-negatives trains the gate of gated heads; give --gate-l2 too")
    rows, saved = load_features(args.out)
    layers, feats = saved["layers"], saved["features"]
    train_at = torch.tensor([r["split"] == "train" for r in rows])
    train_feats, held_feats = feats[train_at], feats[~train_at]
    train_rows = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "held_out"]
    harmful = torch.tensor([r["subset"] == "harmless-base" for r in train_rows])
    negatives, negative_rows = (load_negatives(args.out, rows, feats) if any(args.negative_weight) or args.gate_negatives
                                else (None, None))
    gate_l2 = args.gate_l2 or [None]
    bars = length_bars(train_rows)
    started = time.perf_counter()
    accuracies = {(layer, *key): acc for i, layer in enumerate(layers) for key, acc in cross_validate(
        train_feats[:, :, i], train_rows, args.l2, args.folds, None if negatives is None else negatives[:, :, i],
        negative_rows, args.negative_weight, gate_l2, args.gate_negatives).items()}
    grid = {key: criterion(args.choose, acc, bars) for key, acc in accuracies.items()}
    layer, l2, negative_weight, gate = max(grid, key=grid.get)
    what = "mean of per-source accuracies" if args.choose == "mean" else "worst source's margin over length"
    print(f"cross-validation on {len(train_rows)} training pairs, {what} ({time.perf_counter() - started:.0f} s):")
    for depth in layers:
        print(f"  after block {depth:2d}: " + "  ".join(
            f"L2 {c:g}{f' neg {w:g}' if any(args.negative_weight) else ''}{'' if g is None else f' gate {g:g}'}"
            f" {grid[depth, c, w, g]:+.3f}" for c in args.l2 for w in args.negative_weight for g in gate_l2))
    print(f"chosen: the state after block {layer}, L2 {l2:g}, negatives weighing {negative_weight:g}"
          + ("" if gate is None else f", gate L2 {gate:g}"))

    index = layers.index(layer)
    mean, std = standardise(train_feats[:, :, index])
    states = (train_feats[:, :, index] - mean) / std
    extra, extra_harmful = None, None
    if negatives is not None:
        extra, extra_harmful = (negatives[:, :, index] - mean) / std, harmful[negative_rows]
    heads = fit_heads(states, harmful, l2, gate is not None, extra, extra_harmful, negative_weight)
    gate_weight = None if gate is None else pair_gate(states, harmful, gate,
                                                      *((extra, extra_harmful) if args.gate_negatives else ()))
    scores = score((held_feats[:, :, index] - mean) / std, heads, gate_weight)
    name = f"reward head, block {layer}" if gate is None else f"gated heads, block {layer}"
    rankings = {name: baselines.outcomes(scores[:, 0].tolist(), scores[:, 1].tolist()),
                "longer reply": baselines.length_outcomes(held, longer=True),
                "shorter reply": baselines.length_outcomes(held, longer=False)}
    table = baselines.table(rankings, [r["subset"] for r in held], partial(metrics.bootstrap_ci, seed=0))
    print(baselines.markdown(table, [name]))
    out = args.out / "reward_model"
    model_dir = (export(saved["model"], layer, heads[0] / std, out) if gate is None
                 else export_gated(saved["model"], layer, heads, gate_weight, mean, std, out))
    result = {"layer": layer, "l2": l2, "negative_weight": negative_weight, "gate_l2": gate,
              "gate_negatives": args.gate_negatives, "choose": args.choose,
              "negatives": 0 if negatives is None else len(negatives), "train_length_bars": bars,
              "cross_validation": {"/".join(f"{v:g}" for v in key if v is not None): accuracies[key] for key in grid},
              "train_pairs": len(train_rows), "held_out": table, "reward_model": str(model_dir),
              "max_tokens": saved["max_tokens"]}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(f"reward model: {model_dir}")


def classifier_from(base: str, blocks: int, gate_block: bool = False):
    """A one-label sequence classifier of the base model's first `blocks` blocks, with their pretrained weights, and
    the base tokenizer. `gate_block`: one more block, all zeros, and biases (zero) in every MLP, for
    `write_gate_block`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = ModelConfig(name_or_path=base, dtype="fp32")
    tokenizer = models.load_tokenizer(cfg, base)
    config = AutoConfig.from_pretrained(base, num_labels=1, num_hidden_layers=blocks + gate_block,
                                        mlp_bias=gate_block, pad_token_id=tokenizer.pad_token_id)
    classifier = AutoModelForSequenceClassification.from_config(config)
    trunk = {name: v for k, v in models.load_causal_lm(cfg, base).state_dict().items()
             if (name := k.removeprefix("model.")) != k
             and not (name.startswith("layers.") and int(name.split(".")[1]) >= blocks)}
    with torch.no_grad():
        for param in classifier.parameters():
            param.zero_()
    missing, unexpected = classifier.model.load_state_dict(trunk, strict=False)
    if unexpected or any(not (k.endswith("_proj.bias") or k.startswith(f"layers.{blocks}.")) for k in missing):
        raise SystemExit(f"the trunk does not fit the classifier: missing {missing}, unexpected {unexpected}")
    return classifier, tokenizer


def export(base: str, layer: int, weight: torch.Tensor, out: Path) -> Path:
    """The first `layer` blocks, the final norm and `weight` as the score layer, saved as a sequence classifier.

    The head was fitted on standardised features; `weight / std` reads the raw ones. The mean's offset is the same
    for both replies of a pair, so it is dropped (the score layer has no bias): scores shift by a constant.
    """
    classifier, tokenizer = classifier_from(base, layer)
    return save_classifier(classifier, tokenizer, weight, out)


def export_gated(base: str, layer: int, heads: list[torch.Tensor], gate: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, out: Path) -> Path:
    """The first `layer` blocks, then one block computing the gated heads (`write_gate_block`), saved."""
    classifier, tokenizer = classifier_from(base, layer, gate_block=True)
    write_gate_block(classifier, *heads, gate, mean, std)
    classifier.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


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


def parser() -> argparse.ArgumentParser:
    """The steps and their options (tests parse through it too, so they get the options' defaults)."""
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
    fitting.add_argument("--negative-weight", type=float, nargs="+", default=[0.0],
                         help="weights of a stock negative pair against a real one to choose from (needs negatives)")
    fitting.add_argument("--gate-l2", type=float, nargs="+", default=[],
                         help="gated heads (hh_rlhf_gated_head.py) instead of one, with these gate L2 strengths")
    fitting.add_argument("--gate-negatives", action="store_true",
                         help="the gate also learns from the stock negatives' states, labelled with their pair's "
                              "source (needs negatives)")
    fitting.add_argument("--choose", choices=["mean", "margin"], default="mean",
                         help="mean per-source accuracy, or the worst source's margin over its length heuristic")
    neg = steps.add_parser("negatives", help="states of a stock negative reply per training pair; resumable")
    neg.add_argument("--out", type=Path, required=True)
    return parser


def main() -> None:
    run_step(parser(), {"extract": extract, "negatives": negatives, "fit": fit})


if __name__ == "__main__":
    main()
