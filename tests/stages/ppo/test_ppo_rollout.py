"""Sampling: the pad token is never sampled, even by a policy that likes it best (unless trl_parity asks for TRL's
behaviour)."""

from __future__ import annotations

import shutil

import torch

from align import generation, rl
from align.stages.ppo import rollout, setup


def test_pad_is_never_sampled_even_when_it_is_the_likeliest_token(tmp_path, make_cfg, tiny_model_dir, reward_file):
    """A policy whose pad logit is scaled 300x samples pad about half the time; the stage masks it out of the
    sampling distribution. With trl_parity (TRL's behaviour) the same policy does sample it."""
    from transformers import AutoModelForCausalLM

    policy_dir = tmp_path / "pad-loving"
    shutil.copytree(tiny_model_dir, policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    with torch.no_grad():
        model.lm_head.weight[model.config.pad_token_id] *= 300
    model.save_pretrained(policy_dir)

    def sampled_pads(*overrides) -> tuple[int, torch.Tensor]:
        cfg = make_cfg(tmp_path, policy_dir, "ppo.response_length=16", *overrides, function=f"{reward_file}:half")
        parts = setup.build(cfg)
        queries, _ = generation.padded(parts.prompts.next(), parts.sampler.pad_id, torch.device("cpu"), side="left")
        with torch.no_grad():
            out = parts.policy.generate(input_ids=queries, attention_mask=queries != parts.sampler.pad_id,
                                        generation_config=parts.sampler.generation_config)
            experience, _ = rollout.rollout(parts.sampler, parts.policy, parts.reference, parts.value_model,
                                            parts.reward, parts.tokenizer, queries)
        generated = out.sequences[:, queries.size(1):]
        _, eos_lengths = rl.truncate_after_eos(generated, parts.sampler.eos_id, parts.sampler.pad_id)
        before_eos = rl.response_mask(eos_lengths, generated.size(1))
        return int((generated[before_eos] == parts.sampler.pad_id).sum()), experience.logprobs

    pads, logprobs = sampled_pads()
    assert pads == 0 and torch.isfinite(logprobs).all()
    parity_pads, _ = sampled_pads("ppo.trl_parity=true", "ppo.score_index=after_eos", "train.max_grad_norm=0")
    assert parity_pads > 20, "the control: without suppression this policy samples pad a lot"


def test_response_logits_equal_a_full_pass_bit_for_bit(tmp_path, make_cfg, tiny_model_dir, reward_file):
    """The policy and the reference run the language-model head on the response positions only (trl_parity's
    training pass on all of them); what they return equals slicing a full pass, exactly."""
    cfg = make_cfg(tmp_path, tiny_model_dir, "ppo.response_length=6", function=f"{reward_file}:half")
    parts = setup.build(cfg)
    queries, _ = generation.padded(parts.prompts.next(), parts.sampler.pad_id, torch.device("cpu"), side="left")
    context = queries.size(1)
    torch.manual_seed(0)
    ids = torch.cat([queries, torch.randint(3, 40, (queries.size(0), 6))], dim=1)
    inputs = rollout.masked_inputs(ids, parts.sampler.pad_id)
    with torch.no_grad():
        full = parts.policy(**inputs, use_cache=False).logits[:, context - 1:-1]
        logits, values = rollout.PolicyAndValue(parts.policy, parts.value_model)(ids, context, parts.sampler.pad_id)
        parity, _ = rollout.PolicyAndValue(parts.policy, parts.value_model, full_logits=True)(
            ids, context, parts.sampler.pad_id)
        ref = rollout._reference_logprobs(parts.sampler, parts.policy, parts.reference, ids, ids[:, context:],
                                          context)
        ref_full = rl.logprobs_from_logits(
            rollout.tempered(parts.reference(**inputs, use_cache=False).logits[:, context - 1:-1],
                             parts.sampler.temperature, parts.sampler.suppressed_id), ids[:, context:])
    assert logits.shape == (ids.size(0), 6, full.size(-1)) and values.shape == (ids.size(0), 6)
    assert torch.equal(logits, full) and torch.equal(parity, full) and torch.equal(ref, ref_full)
    assert rollout.response_positions(ids, context) == 7
