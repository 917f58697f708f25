"""`align chat`: talk to a model with its own chat template, replies streamed token by token; or, for scripts, answer
one prompt (--prompt) or a file of prompts (--prompts, --out). With --compare a second model answers every turn too.

The terminal is the caller's: `interact` reads lines with `read` and shows text with `write`, so only the CLI prints.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import data_formats
from align import generation, models
from align.errors import ConfigError
from align.use import source as sources
from align.use.config import ChatConfig

log = logging.getLogger(__name__)

COMMANDS = "/reset  /system TEXT  /save FILE  /quit"

Write = Callable[[str], None]
Read = Callable[[str], str]
"""Shows its argument as a prompt and returns the line typed; raises EOFError at the end of input."""


@dataclass
class Speaker:
    """One model in the conversation, with the conversation as it has seen it (its own replies)."""

    label: str
    tokenizer: object
    model: object
    messages: list[dict] = field(default_factory=list)


@dataclass
class Session:
    cfg: ChatConfig
    speakers: list[Speaker]
    system: str | None

    def reset(self) -> None:
        for speaker in self.speakers:
            speaker.messages = [{"role": "system", "content": self.system}] if self.system else []

    def set_system(self, text: str) -> None:
        """A new system prompt; the conversation starts again, as the old turns were answered under another one."""
        self.system = text or None
        self.reset()

    def answer(self, text: str, on_text: Callable[[str, str], None] | None = None) -> list[tuple[str, str]]:
        """(label, reply) of every speaker to the user message `text`, each added to its conversation.
        `on_text(label, piece)` receives each reply as it is generated."""
        replies = []
        for speaker in self.speakers:
            speaker.messages.append({"role": "user", "content": text})
            stream = (lambda piece, label=speaker.label: on_text(label, piece)) if on_text else None
            reply = generate_reply(speaker, self.cfg, stream)
            speaker.messages.append({"role": "assistant", "content": reply})
            replies.append((speaker.label, reply))
        return replies

    def save(self, path: str) -> Path:
        """The conversation as OpenAI chat messages (a JSON list); with --compare, {label: messages} per model."""
        out = Path(path).expanduser()
        value = (self.speakers[0].messages if len(self.speakers) == 1
                 else {speaker.label: speaker.messages for speaker in self.speakers})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return out


def load(cfg: ChatConfig) -> Session:
    import torch

    models.configure_threads(cfg.num_threads)
    names = [cfg.model] + ([cfg.compare] if cfg.compare else [])
    resolved = [sources.resolve(name) for name in names]
    labels = [found.label for found in resolved]
    if len(set(labels)) < len(labels):  # run1/dpo against run2/dpo: tell them apart by the whole name
        labels = [found.name for found in resolved]
    speakers = []
    for found, label in zip(resolved, labels, strict=True):
        tokenizer, model = sources.load(found)
        speakers.append(Speaker(label, tokenizer, model))
    torch.manual_seed(cfg.seed)
    session = Session(cfg, speakers, cfg.system)
    session.reset()
    return session


def generate_reply(speaker: Speaker, cfg: ChatConfig, on_text: Callable[[str], None] | None) -> str:
    """The model's reply to its conversation so far, sampled as `cfg` says; `on_text` gets it piece by piece."""
    import torch
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text and on_text:
                on_text(text)

    tokenizer, model = speaker.tokenizer, speaker.model
    ids = torch.tensor([generation.prompt_ids(tokenizer, speaker.messages)], device=model.device)
    settings = generation.generation_config(tokenizer, cfg.max_new_tokens, cfg.sampling_temperature(),
                                            top_p=cfg.top_p)
    streamer = Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if on_text else None
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=settings,
                             streamer=streamer)
    return tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True).strip()


def interact(session: Session, read: Read, write: Write) -> None:
    """The chat loop, until /quit, end of input or Ctrl-C."""
    cfg = session.cfg
    names = " and ".join(speaker.label for speaker in session.speakers)
    write(f"chatting with {names} (temperature {cfg.sampling_temperature()}, top-p {cfg.top_p}, at most "
          f"{cfg.max_new_tokens} new tokens); commands: {COMMANDS}\n")
    labelled = len(session.speakers) > 1
    shown: list[str] = []

    def show(label: str, piece: str) -> None:
        if labelled and shown[-1:] != [label]:
            write(("\n" if shown else "") + f"[{label}] ")
            shown.append(label)
        write(piece)

    try:
        while True:
            line = read("> ").strip()
            if not line:
                continue
            if line.startswith("/"):
                if not _command(session, line, write):
                    return
                continue
            shown.clear()
            session.answer(line, show)
            write("\n")
    except (EOFError, KeyboardInterrupt):
        write("\n")


def _command(session: Session, line: str, write: Write) -> bool:
    """Run one in-chat command; False ends the session."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name == "/quit":
        return False
    if name == "/reset":
        session.reset()
        write("conversation cleared\n")
    elif name == "/system":
        session.set_system(argument)
        write(f"system prompt {'set' if argument else 'removed'}; conversation cleared\n")
    elif name == "/save" and argument:
        try:
            write(f"saved to {session.save(argument)}\n")
        except OSError as e:  # a typo in the path should not end the conversation
            write(f"could not save to {argument}: {e.strerror or e}\n")
    else:
        write(f"unknown command {line!r}; commands: {COMMANDS}\n")
    return True


def answer_prompt(cfg: ChatConfig) -> list[tuple[str, str]]:
    """(label, reply) of each model to --prompt."""
    return load(cfg).answer(cfg.prompt)


def answer_file(cfg: ChatConfig) -> tuple[Path, int]:
    """Answer every prompt of --prompts into --out (JSONL: prompt, completion as an assistant message, model);
    returns (the file, rows written)."""
    prompts = [row["prompt"] for row in data_formats.load_source(cfg.prompts, "prompt").rows]
    if not prompts:
        raise ConfigError(f"prompts: {cfg.prompts} has no prompts")
    if cfg.system:
        prompts = [p if p[0]["role"] == "system" else [{"role": "system", "content": cfg.system}, *p]
                   for p in prompts]
    session = load(cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for speaker in session.speakers:
        log.info("%s: answering %d prompts from %s", speaker.label, len(prompts), cfg.prompts)
        done = generation.generate(speaker.model, speaker.tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.sampling_temperature(), top_p=cfg.top_p, seed=cfg.seed,
                                   batch_size=cfg.batch_size)
        rows += [{"prompt": prompt, "completion": [{"role": "assistant", "content": text.strip()}],
                  "model": speaker.label} for prompt, text in zip(prompts, done.texts, strict=True)]
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return out, len(rows)


def run(cfg: ChatConfig, read: Read, write: Write) -> None:
    """`align chat`: answer --prompts into --out, or --prompt (only the reply is written), or chat until /quit."""
    if cfg.prompts is not None:
        out, rows = answer_file(cfg)
        write(f"wrote {rows} replies to {out}\n")
    elif cfg.prompt is not None:
        replies = answer_prompt(cfg)
        for label, reply in replies:
            write(f"[{label}] {reply}\n" if len(replies) > 1 else f"{reply}\n")
    else:
        interact(load(cfg), read, write)
