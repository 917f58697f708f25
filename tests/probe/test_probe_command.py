"""`align probe REWARD_MODEL --data PAIRS` end to end on a tiny reward model: every variant scored, the file written,
the numbers the judge's, exit 1 when a variant wins too often."""

import json

from tiny import PAIRS, write_pairs

from align import cli
from align.eval import judges
from align.probe import variants


def test_probe_writes_every_variant_with_the_judges_own_scores(tmp_path, tiny_reward_model_dir, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:6])
    out = tmp_path / "probe"
    code = cli.main(["probe", str(tiny_reward_model_dir), "--data", str(pairs), "--out", str(out),
                     "bootstrap_samples=50"])
    written = json.loads((out / "probe.json").read_text())
    assert code == (0 if written["passed"] else 1) and written["pairs"] == 6
    worst = written["variants"][written["worst"]]["win_rate"]
    assert worst == max(v["win_rate"] for v in written["variants"].values())
    printed = capsys.readouterr().out
    assert "| variant |" in printed and (written["passed"] or f"'{written['worst']}'" in printed)
    # No tiny chosen reply is a refusal: every variant but compliance applies to all 6.
    assert {name: v["n"] for name, v in written["variants"].items()} == {
        name: 6 for name in variants.VARIANTS if name != "compliance"}
    judge = judges.RewardModelJudge.load(str(tiny_reward_model_dir), "cpu", 8)
    prompts = [[{"role": "user", "content": p}] for p, _, _ in PAIRS[:6]]
    originals = judge.score(prompts, [[{"role": "assistant", "content": c}] for _, c, _ in PAIRS[:6]])
    emptied = judge.score(prompts, [[{"role": "assistant", "content": ""}]] * 6)
    wins = sum(1.0 if e > o else 0.5 if e == o else 0.0 for e, o in zip(emptied, originals)) / 6
    assert abs(written["variants"]["empty"]["win_rate"] - wins) < 1e-9
    low, high = written["variants"]["empty"]["ci"]
    assert low <= wins <= high
    assert (out / "config.yaml").is_file() and "| empty |" in (out / "probe.md").read_text()


def test_probe_max_length_cuts_long_texts_and_says_how_many(tmp_path, tiny_reward_model_dir, caplog):
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:2])
    scores = {}
    for limit in (1024, 6):
        out = tmp_path / f"probe{limit}"
        with caplog.at_level("INFO", logger="align.probe.command"):
            cli.main(["probe", str(tiny_reward_model_dir), "--data", str(pairs), "--out", str(out),
                      "--max-length", str(limit), "bootstrap_samples=10"])
        scores[limit] = json.loads((out / "probe.json").read_text())["variants"]["filler"]["mean_margin"]
    # Every tiny conversation is longer than 6 tokens: the cut changes what the reward model reads.
    assert "texts were over max_length=6 tokens and lost their start" in caplog.text
    assert "max_length=1024" not in caplog.text and scores[6] != scores[1024]
