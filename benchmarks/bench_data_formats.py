"""Throughput of the dataset formatters: 100k synthetic Alpaca and HH-RLHF rows, converted on one core.

Writes the rows as JSONL to a temporary folder, then times `load_source` (read + detect + convert + validate).
Run: python benchmarks/bench_data_formats.py [--rows 100000]. Target: >= 20k rows/s per format.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from data_formats import load_source

WORDS = ("the", "model", "answers", "questions", "about", "cooking", "travel", "code", "history", "music",
         "science", "gardens", "weather", "and", "many", "other", "everyday", "topics", "with", "short", "clear",
         "helpful", "sentences")


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def alpaca_row(rng: random.Random) -> dict:
    return {"instruction": _text(rng, 5, 20), "input": _text(rng, 0, 20) if rng.random() < 0.4 else "",
            "output": _text(rng, 20, 150)}


def hh_row(rng: random.Random) -> dict:
    turns = "".join(f"\n\nHuman: {_text(rng, 5, 25)}\n\nAssistant: {_text(rng, 10, 60)}"
                    for _ in range(rng.randint(0, 3)))
    prompt = f"{turns}\n\nHuman: {_text(rng, 5, 25)}\n\nAssistant:"
    return {"chosen": f"{prompt} {_text(rng, 10, 80)}", "rejected": f"{prompt} {_text(rng, 10, 80)}"}


CASES = (("alpaca", "sft", alpaca_row), ("hh_rlhf", "preference", hh_row))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, make_row in CASES:
            path = Path(tmp) / f"{name}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for _ in range(args.rows):
                    f.write(json.dumps(make_row(rng)) + "\n")
            start = time.perf_counter()
            loaded = load_source(str(path), kind)
            seconds = time.perf_counter() - start
            if loaded.report.format != name or loaded.report.rows_out != args.rows:
                raise SystemExit(f"unexpected result for {name}: {loaded.report.summary()}")
            results.append((name, kind, args.rows, path.stat().st_size / 1e6, seconds))
    print(f"{'format':<10} {'kind':<11} {'rows':>8} {'MB':>7} {'seconds':>8} {'rows/s':>9}")
    for name, kind, rows, megabytes, seconds in results:
        print(f"{name:<10} {kind:<11} {rows:>8} {megabytes:>7.1f} {seconds:>8.2f} {rows / seconds:>9,.0f}")


if __name__ == "__main__":
    main()
