"""TRL's fused LM head scores only labelled positions on CPU once align.stages.fused_head is applied: same log-probs and
gradients as scoring every position, on fewer rows."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from trl.kernels import chunked_logprob
from trl.trainer import utils as trl_utils

from align.stages import fused_head


def fused_pass(model_dir, monkeypatch, patched: bool):
    """Log-probs, gradients and the number of positions the head projected, for one labelled batch."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    if patched:
        assert fused_head.score_labelled_positions_only()
    rows = []

    def counting_apply(hidden, *args):
        rows.append(hidden.shape[0])
        return chunked_logprob.ChunkedLogProbFunction.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", SimpleNamespace(apply=counting_apply))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 12))
    labels = ids.clone()
    labels[:, :7] = -100  # a prompt: no loss there
    labels[2, 10:] = -100  # and padding
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.log_probs.sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.log_probs.detach(), grads, rows


def test_labelled_positions_only_same_logprobs_and_gradients(tiny_model_dir, monkeypatch):
    every_logps, every_grads, every_rows = fused_pass(tiny_model_dir, monkeypatch, patched=False)
    only_logps, only_grads, only_rows = fused_pass(tiny_model_dir, monkeypatch, patched=True)
    # Shifted by one: 11 positions per row have a next token; rows 0-1 label 5 of them, row 2 labels 3.
    assert every_rows == [3 * 11] and only_rows == [5 + 5 + 3]
    torch.testing.assert_close(only_logps, every_logps, rtol=1e-5, atol=1e-6)
    assert (only_logps[:, :6] == 0).all() and (only_logps[2, 9:] == 0).all()
    assert every_grads.keys() == only_grads.keys()
    for name, grad in every_grads.items():
        torch.testing.assert_close(only_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_applying_twice_is_one_patch_and_gpus_keep_trls_choice(monkeypatch):
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    assert fused_head.score_labelled_positions_only() and fused_head.score_labelled_positions_only()
    choose = trl_utils._use_triton
    assert choose is fused_head._compact_everywhere_but_compiled
    assert choose(torch.device("cpu"))
    assert choose(torch.device("cuda")) == chunked_logprob._use_triton(torch.device("cuda"))
    assert not choose(torch.device("meta"))
