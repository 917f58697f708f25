"""align.eval.scoring: reply log-probs and per-sample KL against plain-torch forward passes written here."""

from __future__ import annotations

import pytest
from plain_torch import PAIRS, load, message, plain_reply_logp

from align import generation
from align.eval import scoring


def test_reply_logps_match_plain_forward_passes(tiny_model_dir):
    tokenizer, model = load(tiny_model_dir)
    prompts = [message("user", p) for p, _, _ in PAIRS]
    replies = [message("assistant", c) for _, c, _ in PAIRS]
    ours = scoring.reply_logps(model, tokenizer, prompts, replies, batch_size=3)
    expected = [plain_reply_logp(model, tokenizer, p, c) for p, c, _ in PAIRS]
    assert ours == pytest.approx(expected, abs=1e-4)


def test_reply_logps_in_a_batch_whose_prompts_differ_in_length(tiny_model_dir):
    """The head runs from the shortest prompt's end on; a longer prompt's row starts later within those positions."""
    tokenizer, model = load(tiny_model_dir)
    rows = [(PAIRS[0][0] + " " + " ".join(p for p, _, _ in PAIRS), PAIRS[0][1]), (PAIRS[1][0], PAIRS[1][1] * 3)]
    ours, lengths = scoring.reply_logps_and_lengths(model, tokenizer, [message("user", p) for p, _ in rows],
                                                    [message("assistant", c) for _, c in rows], batch_size=2)
    assert ours == pytest.approx([plain_reply_logp(model, tokenizer, p, c) for p, c in rows], abs=1e-4)
    replies = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for _, c in rows]  # with the EOS
    assert lengths == replies


def test_kl_per_sample_matches_k3_by_hand(tiny_model_dir, policy_dir):
    import torch

    tokenizer, reference = load(tiny_model_dir)
    _, policy = load(policy_dir)
    eos = tokenizer.eos_token_id
    prompt_ids = [generation.prompt_ids(tokenizer, message("user", p)) for p, _, _ in PAIRS[:3]]
    responses = [tokenizer("paris", add_special_tokens=False)["input_ids"] + [eos],
                 tokenizer("the sea and the sky", add_special_tokens=False)["input_ids"],
                 [eos]]
    generated = generation.Generated(prompt_ids=prompt_ids, responses=responses, has_eos=[True, False, True],
                                      texts=["", "", ""])
    ours = scoring.kl_per_sample(policy, reference, generated, tokenizer.pad_token_id, "k3", batch_size=3)
    expected = []
    for prompt, response in zip(prompt_ids, responses):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = torch.log_softmax(policy(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            ref = torch.log_softmax(reference(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        log_ratio = (ref - logp)[len(prompt) - 1:]
        expected.append(float((log_ratio.exp() - 1 - log_ratio).sum()))
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert all(kl > 0 for kl in ours)
