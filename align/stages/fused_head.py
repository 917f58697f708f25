"""Make TRL's fused LM head score only labelled positions on CPU too, as it already does on CUDA and XPU.

TRL (>= 1.16) replaces the LM head of SFT and DPO models with a tiled log-prob kernel that skips the positions whose
label is -100 only where Triton runs. Elsewhere it scores every position, because on compiled backends (Neuron) a
changing number of valid positions would recompile the tiles every batch. Eager CPU has no such cost, and in chat
data many positions are prompt or padding: scoring them all made the quick start's SFT 1.24x and its DPO 1.30x
slower (benchmarks/README.md, "align.stages.fused_head"). The log-probs are the same; masked positions are zero either
way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _compact_everywhere_but_compiled(device: torch.device) -> bool:
    from trl.kernels import chunked_logprob

    return chunked_logprob._use_triton(device) or device.type == "cpu"


def score_labelled_positions_only() -> bool:
    """Patch TRL's choice (idempotent); returns False, changing nothing, when this TRL has no such choice."""
    from trl.trainer import utils as trl_utils

    if not hasattr(trl_utils, "_use_triton"):
        log.debug("trl.trainer.utils has no _use_triton: its fused LM head is left as it is")
        return False
    trl_utils._use_triton = _compact_everywhere_but_compiled
    return True
