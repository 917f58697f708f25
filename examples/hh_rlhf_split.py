"""Split HH-RLHF pairs into training and held-out JSONL files that share no first human utterance.

Reads the helpful-base and harmless-base files of the offline hh-rlhf copy, turns them into canonical preference
rows with data_formats, groups the pairs by their first human utterance (lowercased, punctuation and spacing
dropped) and deals whole groups, shuffled with a seed, to the held-out set first and to training after, so no
prompt opening is in both. Pairs longer than --max-chars characters (prompt + longer reply) are left out, so a few
hundred pairs fit a short CPU run. Writes, under --out (keep it in the gitignored runs/ folder):
  train_pairs.jsonl  preference rows for the reward and DPO stages
  sft.jsonl          the same prompts with their chosen replies, as chat rows for the SFT stage
  eval_pairs.jsonl   held-out preference rows
  split.json         counts and settings

    python examples/hh_rlhf_split.py --out runs/hh_rlhf/data --train 320 --eval 200
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import data_formats

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"
SUBSETS = ("helpful-base", "harmless-base")


def opening(row: dict) -> str:
    first = next(m["content"] for m in row["prompt"] if m["role"] == "user")
    return re.sub(r"[\W_]+", " ", first.lower()).strip()


def length(row: dict) -> int:
    prompt = sum(len(m["content"]) for m in row["prompt"])
    return prompt + max(sum(len(m["content"]) for m in row[side]) for side in ("chosen", "rejected"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="the hh-rlhf folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=320, help="training pairs")
    parser.add_argument("--eval", type=int, default=200, help="held-out pairs")
    parser.add_argument("--max-chars", type=int, default=900, help="longest prompt + reply kept, in characters")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    groups: dict[str, list[dict]] = {}
    seen = 0
    for subset in SUBSETS:
        rows = data_formats.load_source(str(args.data / subset / "test.jsonl"), "preference", on_error="skip").rows
        seen += len(rows)
        for row in rows:
            if length(row) <= args.max_chars and row["chosen"] != row["rejected"]:
                groups.setdefault(opening(row), []).append({**row, "subset": subset})
    order = sorted(groups)
    random.Random(args.seed).shuffle(order)

    held_out, train = [], []
    for key in order:
        target = held_out if len(held_out) < args.eval else train
        if len(target) >= (args.eval if target is held_out else args.train):
            break
        target.extend(groups[key])
    held_out, train = held_out[: args.eval], train[: args.train]
    assert not {opening(r) for r in held_out} & {opening(r) for r in train}

    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "train_pairs.jsonl", [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train])
    write(args.out / "eval_pairs.jsonl", [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in held_out])
    write(args.out / "sft.jsonl", [{"messages": r["prompt"] + r["chosen"]} for r in train])
    counts = {name: {s: sum(r["subset"] == s for r in rows) for s in SUBSETS}
              for name, rows in (("train", train), ("eval", held_out))}
    report = {"pairs_read": seen, "kept_under_max_chars": sum(map(len, groups.values())), "groups": len(groups),
              "train": len(train), "eval": len(held_out), "by_subset": counts, **vars(args)}
    (args.out / "split.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2, default=str))


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
