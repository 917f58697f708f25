"""ChatConfig and ExportConfig: the options of `align chat` and `align export`, as command-line options, a YAML file
or KEY=VALUE overrides. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

INTERACTIVE_TEMPERATURE = 0.7
"""The sampling temperature of an interactive chat when --temperature is not given."""


@dataclass(kw_only=True)
class ChatConfig:
    """The options of `align chat`."""

    stage: Literal["chat"] = "chat"
    """Names the command this file configures, so `align validate` can tell (not an option)."""
    model: str
    """The model: an alias, a stage output dir, a LoRA adapter dir, a hub id, or a pipeline run dir (its last
    stage)."""
    compare: str | None = None
    """A second model (same forms as MODEL) that answers every turn too, after the first, labelled."""
    system: str | None = None
    """System prompt at the start of the conversation."""
    prompt: str | None = None
    """Answer this one user message, print only the reply and exit (no interactive session)."""
    prompts: str | None = None
    """Answer every prompt of this file (any prompt source `align data inspect` reads) into --out."""
    out: str | None = None
    """JSONL file the replies to --prompts go to: one row per prompt (and per model with --compare)."""
    temperature: float | None = None
    """Sampling temperature; 0 decodes greedily. Default: 0 with --prompt/--prompts (reproducible), 0.7 in a chat."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches this (1: all)."""
    max_new_tokens: int = 256
    """Longest reply, in tokens."""
    seed: int = 0
    """Seed for sampling."""
    batch_size: int = 8
    """Prompts per generate call with --prompts."""
    num_threads: int = 0
    """CPU threads for torch (0: one per core this process may use)."""

    @property
    def scripted(self) -> bool:
        """True for --prompt / --prompts: no interactive session."""
        return self.prompt is not None or self.prompts is not None

    def sampling_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.scripted else INTERACTIVE_TEMPERATURE

    def check(self) -> list[str]:
        problems = []
        if self.prompt is not None and self.prompts is not None:
            problems.append("prompt, prompts: give one of them, not both")
        if (self.prompts is None) != (self.out is None):
            problems.append("prompts, out: --prompts FILE needs --out FILE.jsonl, and --out only applies to --prompts")
        if self.temperature is not None and self.temperature < 0:
            problems.append(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: must be within (0, 1], got {self.top_p}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_threads < 0:
            problems.append(f"num_threads: must be >= 0, got {self.num_threads}")
        return problems


@dataclass(kw_only=True)
class ExportConfig:
    """The options of `align export`."""

    stage: Literal["export"] = "export"
    """Names the command this file configures, so `align validate` can tell (not an option)."""
    model: str
    """The model: an alias, a stage output dir, a LoRA adapter dir (stacked adapters too), a hub id, or a pipeline
    run dir (its last stage)."""
    format: Literal["hf", "gguf"]
    """hf: a merged Hugging Face checkpoint with a model card. gguf: one .gguf file for llama.cpp plus an Ollama
    Modelfile."""
    out: str
    """The directory to write (new or empty)."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """hf: the dtype the weights are saved in (auto: the source checkpoint's own)."""
    quant: Literal["f32", "f16", "bf16", "q8_0"] = "f16"
    """gguf: the tensor type of the weight matrices (norms stay f32, as in llama.cpp)."""
    num_threads: int = 0
    """CPU threads for torch (0: one per core this process may use)."""

    def check(self) -> list[str]:
        problems = []
        if self.format == "gguf" and self.dtype != "auto":
            problems.append("dtype: applies to --format hf; a GGUF's tensor type is --quant")
        if self.format == "hf" and self.quant != "f16":
            problems.append("quant: applies to --format gguf; an hf checkpoint's weights type is --dtype")
        if self.num_threads < 0:
            problems.append(f"num_threads: must be >= 0, got {self.num_threads}")
        return problems
