"""examples/hh_rlhf_gated_head.py and `fit --gate-l2`: the ramp by hand, the gate learns the source, gated heads rank
pairs one head cannot, and the exported block scores what the heads score."""

from __future__ import annotations

import json

import example_scripts
import pytest
import torch

from align.eval.judges import RewardModelJudge


@pytest.fixture(scope="module")
def head():
    return example_scripts.load("hh_rlhf_reward_head")


@pytest.fixture(scope="module")
def gated():
    return example_scripts.load("hh_rlhf_gated_head")


def test_ramp_by_hand(gated):
    # (silu(3.5) - silu(-1.5)) / 5 = (3.5 * 0.970688 + 1.5 * 0.182426) / 5
    assert gated.ramp(torch.tensor(1.0)).item() == pytest.approx(0.734209, abs=1e-5)
    assert gated.ramp(torch.tensor(0.0)).item() == pytest.approx(0.5)
    assert gated.ramp(torch.tensor(-20.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert gated.ramp(torch.tensor(20.0)).item() == pytest.approx(1.0, abs=1e-6)


def test_fit_gate_learns_which_source_a_state_comes_from(gated):
    torch.manual_seed(0)
    states = torch.randn(400, 6)
    harmful = states[:, 3] + 0.1 * torch.randn(400) > 0
    gate = gated.fit_gate(states, harmful, l2=0.01)
    assert gate[3] > 5 * gate[[0, 1, 2, 4, 5]].abs().max()
    assert ((states @ gate[:-1] + gate[-1] > 0) == harmful).float().mean() > 0.95


def _pairs(n: int, hidden: int) -> tuple[torch.Tensor, list[str]]:
    """Helpful pairs decided by feature 0 up, harmless-base ones by feature 0 down; feature 1 tells the sources."""
    torch.manual_seed(0)
    feats = torch.randn(n, 2, hidden)
    sources = ["helpful-base" if i % 2 == 0 else "harmless-base" for i in range(n)]
    for i, source in enumerate(sources):
        feats[i, :, 1] += 2.0 if source == "harmless-base" else -2.0
        sign = 1.0 if source == "helpful-base" else -1.0
        if sign * (feats[i, 0, 0] - feats[i, 1, 0]) < 0:
            feats[i] = feats[i].flip(0)
    return feats, sources


def test_gated_heads_rank_pairs_whose_sources_want_opposite_things(head, gated):
    feats, sources = _pairs(400, 6)
    harmful = torch.tensor([s == "harmless-base" for s in sources])
    one = head.fit_heads(feats, harmful, 0.01, gated=False)
    two = head.fit_heads(feats, harmful, 0.01, gated=True)
    gate = head.pair_gate(feats, harmful, 0.01)
    right = {name: head.score(feats, heads, g) for name, heads, g in (("one", one, None), ("two", two, gate))}
    accuracy = {name: (s[:, 0] > s[:, 1]).float().mean().item() for name, s in right.items()}
    assert accuracy["two"] > 0.9 and accuracy["one"] < 0.65
    assert two[0][0] > 0 > two[1][0]  # the helpful head wants feature 0 up, the harmless head down


def test_exported_gate_block_scores_what_the_gated_heads_score(head, gated, tiny_frozen_lm, tiny_model_dir,
                                                                tmp_path):
    tokenizer, model = tiny_frozen_lm
    prompt = [{"role": "user", "content": "what is the capital of france?"}]
    replies = ["paris", "the cat sat on the mat", "paris is the capital of france", "no"]
    with torch.no_grad():
        states = torch.stack([head.eos_states(model, head.reply_ids(
            tokenizer, prompt, [{"role": "assistant", "content": r}], 64), [1])[0] for r in replies])
    mean, std = states.mean(0), states.std(0) + 0.5
    z = (states - mean) / std
    torch.manual_seed(3)
    helpful, harmless = torch.randn(32), torch.randn(32)
    toward = 12 * (z[0] - z[1]) / (z[0] - z[1]).pow(2).sum()  # gate logits +6 for reply 0 and -6 for reply 1
    gate = torch.cat([toward, -(toward @ (z[0] + z[1]) / 2)[None]])
    opened = gated.ramp(z @ gate[:-1] + gate[-1])
    assert opened[0] > 0.8 and opened[1] < 0.2  # the export is checked with the gate both open and shut

    out = head.export_gated(str(tiny_model_dir), 1, [helpful, harmless], gate, mean, std, tmp_path / "rm")

    judge = RewardModelJudge.load(str(out), "cpu", batch_size=2)
    assert judge.model.config.num_hidden_layers == 2 and judge.model.config.mlp_bias
    got = torch.tensor(judge.score([prompt] * 4, [[{"role": "assistant", "content": r}] for r in replies]))
    want = gated.gated_scores(z, helpful, harmless, gate)
    # scores agree up to the offset the export drops, which is the same for every reply
    torch.testing.assert_close(got - got[0], want - want[0], atol=2e-3, rtol=2e-3)
    pretrained = head.classifier_from(str(tiny_model_dir), 1)[0].model.layers[0].state_dict()
    for name, value in judge.model.model.layers[0].state_dict().items():  # the first block is the base model's
        torch.testing.assert_close(value, pretrained.get(name, torch.zeros_like(value)))


def test_fit_with_a_gate_chooses_gated_heads_and_exports_them(head, tiny_model_dir, tmp_path, capsys):
    feats, sources = _pairs(300, 32)
    rows = [{"prompt": [{"role": "user", "content": f"question {i // 2}"}],
             "chosen": [{"role": "assistant", "content": "a" * (1 + i % 3)}],
             "rejected": [{"role": "assistant", "content": "b" * (1 + i % 5)}],
             "subset": s, "split": "held_out" if i < 60 else "train"} for i, s in enumerate(sources)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.save({"layers": [1], "pairs": 300, "done": 300, "features": feats[:, :, None],
                "model": str(tiny_model_dir), "max_tokens": 64}, tmp_path / "features.pt")

    head.fit(head.parser().parse_args(["fit", "--out", str(tmp_path), "--l2", "0.1", "--gate-l2", "0.01", "1",
                                       "--choose", "margin"]))

    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["cross_validation"]) == {"1/0.1/0/0.01", "1/0.1/0/1"}
    assert result["gate_l2"] in (0.01, 1.0)
    assert min(result["cross_validation"]["1/0.1/0/0.01"].values()) > 0.75  # one head: about 0.5
    assert result["held_out"]["all"]["gated heads, block 1"]["accuracy"] > 0.75
    judge = RewardModelJudge.load(result["reward_model"], "cpu", batch_size=2)
    assert judge.model.config.num_hidden_layers == 2  # one pretrained block and the gate block
    assert "gate L2" in capsys.readouterr().out


def test_gate_negatives_teach_the_gate_that_a_reply_s_wording_is_not_its_source(head, gated):
    torch.manual_seed(0)
    states = torch.randn(400, 2, 4)
    harmful = torch.arange(400) % 2 == 1
    states[harmful, :, 1] += 1.5  # feature 1: the conversation's source
    states[harmful, :, 2] += 3.0  # feature 2: declining, which harmless-base replies do and helpful ones rarely
    negatives = states[~harmful].clone()
    negatives[:, 1, 2] += 3.0  # a stock refusal to a helpful request: declining, and still a helpful conversation
    plain = head.pair_gate(states, harmful, 0.01)
    taught = head.pair_gate(states, harmful, 0.01, negatives, torch.zeros(len(negatives), dtype=torch.bool))
    assert plain[2] > plain[1]  # without them the gate reads the declining
    assert taught[2] < plain[2] / 2 and taught[1] > plain[1]  # with them it reads the source more
    refusals = negatives[:, 1]
    opened = {name: gated.ramp(refusals @ g[:-1] + g[-1]).mean() for name, g in (("plain", plain), ("taught", taught))}
    assert opened["plain"] > 0.8 and opened["taught"] < 0.45  # refusals to helpful requests: to the helpful head
