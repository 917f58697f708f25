"""align.eval.judges: judge specs, rule loading, and a reward model's scores against a plain forward pass."""

from __future__ import annotations

import json

import pytest
from plain_torch import EOS, PAIRS, message, plain_reward, plain_reward_model

from align.errors import ConfigError
from align.eval import judges


@pytest.mark.parametrize("spec", ["reward", "reward:", "rm:/x", "nonsense"])
def test_bad_judge_specs(spec):
    with pytest.raises(ConfigError, match="--judge: expected reward:DIR or rule:module:function"):
        judges.parse_judge(spec)


def test_rule_loading_errors(tmp_path):
    with pytest.raises(ConfigError, match="module 'no_such_module_x' not found"):
        judges.load_rule("no_such_module_x:fn")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        judges.load_rule("json:nope")
    with pytest.raises(ConfigError, match="not found"):
        judges.load_rule(f"{tmp_path}/missing.py:fn")
    assert judges.load_rule("json:dumps") is json.dumps


def test_reward_judge_scores_the_text_cut_after_the_reply_eos(tiny_reward_model_dir):
    judge = judges.RewardModelJudge.load(str(tiny_reward_model_dir), "cpu", batch_size=2)
    ours = judge.score([message("user", p) for p, _, _ in PAIRS], [message("assistant", c) for _, c, _ in PAIRS])
    reward_model = plain_reward_model(tiny_reward_model_dir)
    expected = [plain_reward(reward_model, judge.tokenizer, p, c) for p, c, _ in PAIRS]
    assert ours == pytest.approx(expected, abs=1e-5)


def test_reward_judge_with_max_length_scores_the_last_tokens_and_counts_the_cut(tiny_reward_model_dir):
    import torch

    judge = judges.RewardModelJudge.load(str(tiny_reward_model_dir), "cpu", batch_size=2, max_length=6)
    prompts, replies = [message("user", p) for p, _, _ in PAIRS], [message("assistant", c) for _, c, _ in PAIRS]
    ours = judge.score(prompts, replies)
    reward_model = plain_reward_model(tiny_reward_model_dir)
    expected, cut = [], 0
    for (p, c, _) in PAIRS:
        text = judge.tokenizer.apply_chat_template(message("user", p) + message("assistant", c), tokenize=False)
        ids = judge.tokenizer(text[:text.rindex(EOS) + len(EOS)], add_special_tokens=False)["input_ids"]
        cut += len(ids) > 6
        assert ids[-1] == judge.tokenizer.convert_tokens_to_ids(EOS)  # the scored token stays
        with torch.no_grad():
            expected.append(float(reward_model(torch.tensor([ids[-6:]])).logits[0, 0]))
    assert ours == pytest.approx(expected, abs=1e-5)
    assert judge.truncated == cut == len(PAIRS)
    # Without the limit the same texts score differently: the cut was real.
    assert judges.RewardModelJudge.load(str(tiny_reward_model_dir), "cpu", 2).score(prompts, replies) != \
        pytest.approx(expected, abs=1e-5)
