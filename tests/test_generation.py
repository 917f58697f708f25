"""Sampling replies on the tiny model: left-padded batches equal one-by-one generation, seeds reproduce, the caller's
random state is untouched; padding token rows; statistics on constructed replies."""

from __future__ import annotations

import pytest

from align import generation, models
from align.generation import Generated
from align.sections import ModelConfig

PROMPTS = [
    [{"role": "user", "content": "what is the capital of france?"}],
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write a short poem about the sea"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    return models.load_tokenizer(cfg), models.load_causal_lm(cfg)


def test_batched_left_padded_generation_equals_one_at_a_time(tiny):
    tokenizer, model = tiny
    batched = generation.generate(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=0.0, batch_size=3)
    single = generation.generate(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=0.0, batch_size=1)
    assert batched.responses == single.responses
    assert len({len(ids) for ids in batched.prompt_ids}) > 1, "prompts of different lengths, so padding happened"


def test_sampling_is_seeded_and_leaves_the_global_random_state_alone(tiny):
    import torch

    tokenizer, model = tiny
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    model.train()
    first = generation.generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    assert model.training, "the caller's train/eval mode is restored"
    model.eval()
    again = generation.generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=7)
    other = generation.generate(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=8)
    assert first.responses == again.responses
    assert first.responses != other.responses
    assert all(tokenizer.pad_token_id not in response for response in first.responses)


def test_replies_are_cut_after_the_first_eos(tiny):
    import torch

    tokenizer, model = tiny
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer("paris", add_special_tokens=False)["input_ids"]
    prompt_width = max(len(generation.prompt_ids(tokenizer, p)) for p in PROMPTS[:2])

    def fake_generate(input_ids, attention_mask, generation_config):
        assert input_ids.shape[1] == prompt_width
        assert bool((attention_mask[:, 0] == 0).any()), "left padding: the shorter prompt starts with pads"
        replies = [word + [eos, pad, pad], word + word + [eos, eos]]
        width = max(map(len, replies))
        return torch.cat((input_ids, torch.tensor([r + [pad] * (width - len(r)) for r in replies])), 1)

    model.generate = fake_generate
    try:
        out = generation.generate(model, tokenizer, PROMPTS[:2], max_new_tokens=8)
    finally:
        del model.generate
    assert out.responses == [word + [eos], word + word + [eos]]
    assert out.has_eos == [True, True]
    assert out.texts == ["paris", "parisparis"]


def test_completion_stats_on_constructed_replies():
    eos = 2
    generated = Generated(prompt_ids=[[1], [1], [1], [1]],
                          responses=[[5, 6, eos], [5, 6, 7, 8, 5, 6, 7, 8], [9, eos], [4, 4, 4, 4, 4]],
                          has_eos=[True, False, True, False], texts=["", "", "", ""])
    stats = generation.completion_stats(generated)
    assert stats["length_mean"] == pytest.approx((3 + 8 + 2 + 5) / 4)
    assert stats["eos_rate"] == 0.5
    assert stats["repetition_rate"] == 0.5  # 5 6 7 8 repeats; 4 4 4 4 4 holds "4 4 4 4" twice (overlapping)


def test_repetition_rate_ignores_a_closing_eos():
    eos = 2
    # [9, 9, 9, eos, ...]: the EOS is not content, so "9 9 9 eos" never counts; [9] * 5 repeats "9 9 9 9".
    replies = [[9, 9, 9, eos], [9, 9, 9, 9, 9], [5, 6, 7, 8, 5, 6, 7, 8, eos], [3, 4, eos]]
    assert generation.repetition_rate(replies, eos) == 0.5
    assert generation.repetition_rate([[9, 9, 9, 9, 9, 9, 9, eos], [eos]], eos) == 0.5
    with pytest.raises(ValueError, match="no replies"):
        generation.repetition_rate([], eos)


@pytest.mark.parametrize("tokens, repeated", [([1, 2, 3, 4, 1, 2, 3, 4], True), ([1, 2, 3, 4, 1, 2, 3, 5], False),
                                              ([7] * 5, True), ([7] * 4, False), ([], False)])
def test_has_repeated_ngram(tokens, repeated):
    assert generation.has_repeated_ngram(tokens) is repeated


@pytest.mark.parametrize("side, ids, mask", [("left", [[0, 0, 5], [6, 7, 8]], [[0, 0, 1], [1, 1, 1]]),
                                             ("right", [[5, 0, 0], [6, 7, 8]], [[1, 0, 0], [1, 1, 1]])])
def test_padded_rows_and_their_mask(side, ids, mask):
    padded, attention = generation.padded([[5], [6, 7, 8]], 0, "cpu", side=side)
    assert padded.tolist() == ids and attention.tolist() == mask


def test_decode_prompts_drops_the_left_padding(tiny):
    tokenizer, _ = tiny
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("hello there", "hi")]
    queries, _ = generation.padded(ids, tokenizer.pad_token_id, "cpu", side="left")
    assert generation.decode_prompts(tokenizer, queries, tokenizer.pad_token_id) == ["hello there", "hi"]


def test_the_neutral_generation_config(tiny):
    tokenizer, _ = tiny
    greedy = generation.generation_config(tokenizer, 8, 0.0)
    sampling = generation.generation_config(tokenizer, 8, 0.7, top_k=5, suppress_pad=False, output_logits=True)
    assert not greedy.do_sample and greedy.suppress_tokens == [tokenizer.pad_token_id]
    assert (sampling.do_sample, sampling.temperature, sampling.top_k, sampling.top_p) == (True, 0.7, 5, 1.0)
    assert sampling.repetition_penalty == 1.0 and sampling.suppress_tokens is None and sampling.output_logits
