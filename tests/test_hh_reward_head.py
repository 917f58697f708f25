"""examples/hh_rlhf_reward_head.py: shared-prompt features equal separate passes, the head fits hand-made pairs, and
the exported reward model scores exactly what the head scores."""

from __future__ import annotations

import example_scripts
import pytest
import torch

from align.eval.judges import RewardModelJudge


@pytest.fixture(scope="module")
def head():
    return example_scripts.load("hh_rlhf_reward_head")


PAIR = {"prompt": [{"role": "user", "content": "what is the capital of france?"}],
        "chosen": [{"role": "assistant", "content": "paris is the capital of france"}],
        "rejected": [{"role": "assistant", "content": "the cat sat on the mat and looked at the dog"}]}


def test_pair_features_run_the_prompt_once_and_equal_separate_passes(head, tiny_frozen_lm):
    tokenizer, model = tiny_frozen_lm
    chosen, rejected = head.pair_ids(tokenizer, PAIR, 512)
    assert chosen[:8] == rejected[:8]  # the shared prompt the cache is reused for
    with torch.no_grad():
        shared = head.pair_features(model, chosen, rejected, [1, 2])
        separate = torch.stack([head.eos_states(model, ids, [1, 2]) for ids in (chosen, rejected)])
        final = model.model(input_ids=torch.tensor([chosen])).last_hidden_state[0, -1]
    assert shared.shape == (2, 2, model.config.hidden_size)
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(separate[0, 1], final)  # the last block's state is what a classifier's head reads


def test_left_truncation_keeps_both_replies_and_their_eos(head, tiny_frozen_lm):
    tokenizer, _ = tiny_frozen_lm
    chosen, rejected = head.pair_ids(tokenizer, PAIR, 6)
    assert len(chosen) == len(rejected) == 6
    assert chosen[-1] == rejected[-1] == tokenizer.eos_token_id
    assert chosen != rejected


def test_fit_head_ranks_pairs_by_the_feature_that_decides_them(head):
    torch.manual_seed(0)
    feats = torch.randn(200, 2, 4)
    swap = feats[:, 0, 2] < feats[:, 1, 2]  # chosen is the reply with the larger third feature
    feats[swap] = feats[swap].flip(1)
    weight = head.fit_head(feats, l2=0.01)
    assert weight[2] > 5 * weight[[0, 1, 3]].abs().max()
    assert bool(((feats[:, 0] - feats[:, 1]) @ weight > 0).all())


def test_exported_reward_model_scores_what_the_head_scores(head, tiny_frozen_lm, tiny_model_dir, tmp_path):
    tokenizer, model = tiny_frozen_lm
    torch.manual_seed(1)
    weight = torch.randn(model.config.hidden_size)
    out = head.export(str(tiny_model_dir), 1, weight, tmp_path / "rm")

    judge = RewardModelJudge.load(str(out), "cpu", batch_size=2)
    assert judge.model.config.num_hidden_layers == 1
    scores = judge.score([PAIR["prompt"]] * 2, [PAIR["chosen"], PAIR["rejected"]])
    with torch.no_grad():
        feats = head.pair_features(model, *head.pair_ids(tokenizer, PAIR, 512), [1])[:, 0]
    torch.testing.assert_close(torch.tensor(scores), feats @ weight, atol=1e-4, rtol=1e-4)


def test_fit_picks_the_depth_that_carries_the_preference_and_exports_it(head, tiny_model_dir, tmp_path, capsys):
    import json

    torch.manual_seed(0)
    rows = [{"prompt": [{"role": "user", "content": f"question {i // 2}"}],
             "chosen": [{"role": "assistant", "content": "a" * (1 + i % 3)}],
             "rejected": [{"role": "assistant", "content": "b" * (1 + i % 5)}],
             "subset": head.SUBSETS[i % 2], "split": "held_out" if i < 40 else "train"} for i in range(200)]
    feats = torch.randn(200, 2, 2, 32)
    feats[:, 0, 1, 0] += 3.0  # after block 2, dimension 0 tells chosen from rejected; after block 1 nothing does
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.save({"layers": [1, 2], "pairs": 200, "done": 200, "features": feats, "model": str(tiny_model_dir),
                "max_tokens": 64}, tmp_path / "features.pt")

    head.fit(head.parser().parse_args(["fit", "--out", str(tmp_path), "--l2", "1", "10"]))

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["layer"] == 2 and result["train_pairs"] == 160
    assert result["cross_validation"]["2/1/0"]["helpful-base"] > 0.9
    assert result["cross_validation"]["1/1/0"]["helpful-base"] < 0.7
    assert result["held_out"]["all"]["reward head, block 2"]["accuracy"] > 0.9
    assert set(result["held_out"]) == {"all", *head.SUBSETS}
    judge = RewardModelJudge.load(result["reward_model"], "cpu", batch_size=2)
    assert judge.model.config.num_hidden_layers == 2
    assert "chosen: the state after block 2" in capsys.readouterr().out


def _reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_negative_reply_is_a_refusal_to_a_helped_request_and_compliance_to_a_declined_one(head):
    from align.probe import variants

    helped = {**PAIR, "subset": "helpful-base"}
    declined = {**PAIR, "chosen": _reply("I'm sorry, I won't help with that."), "subset": "harmless-base"}
    assert [head.negative_reply(helped, n) for n in range(4)] == [*head.REFUSALS, head.REFUSALS[0]]
    assert head.negative_reply(declined, 0) == head.COMPLIANCE
    assert head.negative_reply({**declined, "subset": "helpful-base"}, 0) is None  # nothing to refuse
    assert head.negative_reply({**helped, "subset": "harmless-base"}, 0) is None  # helping may have been wrong
    # the probe must not score the texts the head was fitted against
    assert variants.REFUSAL not in head.REFUSALS and variants.COMPLIANCE != head.COMPLIANCE


def test_fit_head_weighs_negative_pairs_by_negative_weight(head):
    torch.manual_seed(0)
    feats = torch.randn(200, 2, 4)
    swap = feats[:, 0, 2] < feats[:, 1, 2]
    feats[swap] = feats[swap].flip(1)
    negatives = torch.randn(200, 1, 4).repeat(1, 2, 1)
    negatives[:, 1, 0] -= 3.0  # each negative is its chosen reply lowered on feature 0, which real pairs ignore
    plain = head.fit_head(feats, l2=0.01)
    unweighted = head.fit_head(feats, l2=0.01, negatives=negatives, negative_weight=0.0)
    weighted = head.fit_head(feats, l2=0.01, negatives=negatives, negative_weight=1.0)
    torch.testing.assert_close(unweighted, plain)
    assert weighted[0] > 0.5 and abs(plain[0]) < 0.1
    assert bool(((feats[:, 0] - feats[:, 1]) @ weighted > 0).float().mean() > 0.9)  # the real pairs still rank


def test_length_bars_and_the_two_criteria_by_hand(head):
    rows = [{"chosen": _reply("a" * c), "rejected": _reply("b" * r), "subset": s} for c, r, s in [
        (5, 1, "helpful-base"), (5, 1, "helpful-base"), (1, 5, "helpful-base"), (3, 3, "helpful-base"),
        (1, 5, "harmless-base"), (5, 1, "harmless-base")]]
    # helpful: longer wins 2 of 4 (the tie misses), shorter 1 of 4; harmless: either heuristic 1 of 2
    assert head.length_bars(rows) == {"helpful-base": 0.5, "harmless-base": 0.5}
    accuracies = {"helpful-base": 0.6, "harmless-base": 0.45}
    assert head.criterion("mean", accuracies, {"helpful-base": 0.5, "harmless-base": 0.5}) == pytest.approx(0.525)
    assert head.criterion("margin", accuracies, {"helpful-base": 0.5, "harmless-base": 0.5}) == pytest.approx(-0.05)


def test_negatives_step_scores_each_negative_where_a_reward_model_reads_it(head, tiny_frozen_lm, tiny_model_dir,
                                                                            tmp_path):
    import json

    tokenizer, model = tiny_frozen_lm
    rows = [{**PAIR, "subset": "helpful-base", "split": "held_out"},  # held out: never a negative
            {**PAIR, "subset": "helpful-base", "split": "train"},
            {**PAIR, "subset": "harmless-base", "split": "train"},  # chosen helped: no negative
            {**PAIR, "chosen": _reply("Sorry, I can't."), "subset": "harmless-base", "split": "train"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.save({"layers": [1, 2], "pairs": 4, "done": 4, "features": torch.zeros(4, 2, 2, 32),
                "model": str(tiny_model_dir), "max_tokens": 64}, tmp_path / "features.pt")

    head.negatives(head.parser().parse_args(["negatives", "--out", str(tmp_path)]))

    kept = torch.load(tmp_path / "negatives.pt")
    assert kept["rows"] == [1, 3] and kept["done"] == 2
    assert kept["texts"] == [head.REFUSALS[0], head.COMPLIANCE]
    for j, i in enumerate(kept["rows"]):
        ids = head.pair_ids(tokenizer, {**rows[i], "chosen": _reply(kept["texts"][j])}, 64)[0]
        with torch.no_grad():
            torch.testing.assert_close(kept["features"][j], head.eos_states(model, ids, [1, 2]))


def test_fit_with_negatives_pairs_each_with_its_chosen_reply_and_records_the_choice(head, tiny_model_dir, tmp_path):
    import json

    torch.manual_seed(0)
    rows = [{"prompt": [{"role": "user", "content": f"question {i // 2}"}],
             "chosen": [{"role": "assistant", "content": "a" * (1 + i % 3)}],
             "rejected": [{"role": "assistant", "content": "b" * (1 + i % 5)}],
             "subset": head.SUBSETS[i % 2], "split": "held_out" if i < 40 else "train"} for i in range(200)]
    feats = torch.randn(200, 2, 1, 32)  # the tiny model's hidden size, for the export
    feats[:, 0, 0, 0] += 3.0  # dimension 0 tells chosen from rejected
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.save({"layers": [1], "pairs": 200, "done": 200, "features": feats, "model": str(tiny_model_dir),
                "max_tokens": 64}, tmp_path / "features.pt")
    negative_of = [50, 120, 199]  # rows of training pairs; their negatives lie low on dimension 1 alone
    negative_states = feats[negative_of, 0].clone()
    negative_states[:, 0, 1] -= 5.0
    torch.save({"rows": negative_of, "texts": ["no"] * 3, "done": 3, "features": negative_states},
               tmp_path / "negatives.pt")

    pairs, positions = head.load_negatives(tmp_path, rows, feats)
    torch.testing.assert_close(pairs[:, 0], feats[negative_of, 0])
    torch.testing.assert_close(pairs[:, 1], negative_states)
    assert positions.tolist() == [i - 40 for i in negative_of]  # indices among the 160 training pairs

    head.fit(head.parser().parse_args(["fit", "--out", str(tmp_path), "--l2", "1", "--negative-weight", "0", "1",
                                       "--choose", "margin"]))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["negatives"] == 3 and result["choose"] == "margin"
    assert set(result["cross_validation"]) == {"1/1/0", "1/1/1"}
    assert result["negative_weight"] in (0.0, 1.0)
    assert result["held_out"]["all"]["reward head, block 1"]["accuracy"] > 0.9
