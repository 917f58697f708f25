"""examples/hh_rlhf_reward_top.py: cached lower states through the top blocks equal the whole model, training moves
the top blocks and learns a preference, and the exported classifier scores what the trained model scores."""

from __future__ import annotations

import argparse
import json

import example_scripts
import pytest
import torch

from align import models
from align.eval.judges import RewardModelJudge
from align.sections import ModelConfig

PAIR = {"prompt": [{"role": "user", "content": "name a large city in the north of italy"}],
        "chosen": [{"role": "assistant", "content": "milan"}],
        "rejected": [{"role": "assistant", "content": "the dog ran after the cat and then it sat down"}]}


@pytest.fixture(scope="module")
def top():
    return example_scripts.load("hh_rlhf_reward_top")


def test_cached_lower_states_through_the_top_blocks_equal_the_whole_model(top, tiny_frozen_lm):
    tokenizer, model = tiny_frozen_lm
    chosen, rejected = top.pair_ids(tokenizer, PAIR, 512)
    shared = top.shared_prefix(chosen, rejected)
    assert shared >= 8  # the prompt runs once, in both halves
    ids = [torch.tensor(x) for x in (chosen[:shared], chosen[shared:], rejected[shared:])]
    with torch.no_grad():
        states = top.run_pair(top.lower_trunk(model, 1), *ids, "input_ids")
        whole = [model.model(input_ids=torch.tensor([x])).last_hidden_state[0, -1] for x in (chosen, rejected)]
    reward = top.TopReward(model, 1, 1)
    torch.testing.assert_close(reward.eos_states(tuple(s.half() for s in states)), torch.stack(whole),
                               atol=2e-2, rtol=2e-2)  # the cache is fp16
    torch.testing.assert_close(reward.eos_states(states), torch.stack(whole), atol=1e-5, rtol=1e-5)

    top.pair_loss(reward(states)).backward()
    grads = [p.grad for p in reward.top.layers[0].parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.parameters())  # the lower trunk and the base stay frozen


def hh_line(question: str, answer: str) -> str:
    return f"\n\nHuman: {question}\n\nAssistant: {answer}"


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_train_learns_a_preference_keeps_the_best_and_exports_what_it_scores(top, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "hh"
    for s, subset in enumerate(("helpful-base", "harmless-base")):
        (data / subset).mkdir(parents=True)
        lines = [{"chosen": hh_line(f"question {s} {i} about topic {i % 7}", "yes sure here it is " * (1 + i % 3)),
                  "rejected": hh_line(f"question {s} {i} about topic {i % 7}", "no no no " * (1 + i % 4))}
                 for i in range(40)]
        (data / subset / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "run"
    top.cache(argparse.Namespace(out=out, data=data, model=str(tiny_model_dir), held_out=16, validation=16,
                                 max_tokens=128, block=1))
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "validation", "held_out"}
    assert len(list((out / "states").glob("*.pt"))) == 1
    settings = argparse.Namespace(out=out, blocks=1, epochs=3, lr=3e-3, batch=4, l2=0.1, eval_every=16, seed=0)
    top.train(settings)

    result = json.loads((out / "result.json").read_text())
    best = result["best"]
    assert best == max(result["history"], key=top.rank)
    assert best["epoch"] > 0 and best["validation_loss"] < result["history"][0]["validation_loss"]
    name = f"top 1 blocks trained, epoch {best['epoch']:.2f}"
    assert result["held_out"]["all"][name]["accuracy"] >= 0.9
    assert set(result["held_out"]) == {"all", "helpful-base", "harmless-base"}
    assert "longer reply" in result["held_out"]["all"]

    _, states, _ = top.load_cache(out)
    base = models.load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir), dtype="fp32"))
    trained = top.TopReward(base, 1, 1)
    trained.load_state_dict(torch.load(out / "best.pt"))
    assert not torch.equal(trained.top.layers[0].mlp.down_proj.weight, base.model.layers[1].mlp.down_proj.weight)
    judge = RewardModelJudge.load(result["reward_model"], "cpu", batch_size=2)
    assert judge.model.config.num_hidden_layers == 2
    held = [(r, s) for r, s in zip(rows, states) if r["split"] == "held_out"][:4]
    replies = [r["chosen"] for r, _ in held] + [r["rejected"] for r, _ in held]
    got = judge.score([r["prompt"] for r, _ in held] * 2, replies)
    want = top.scores(trained, [s for _, s in held])
    torch.testing.assert_close(torch.tensor(got), want.T.reshape(-1), atol=5e-2, rtol=5e-2)  # fp16 cache

    top.train(settings)  # a finished run continues from its checkpoint and changes nothing
    assert "continuing at epoch 3" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["best"] == best
