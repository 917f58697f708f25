"""`align chat` on tiny models, through stdin and stdout as a user would: multi-turn replies that see the earlier
turns, /reset, /system, /save, --compare, end of input and Ctrl-C without a traceback, --prompt printing only the
reply, --prompts answering a data file. Replies are greedy, so each is checked against the model's own greedy
continuation of the same conversation."""

from __future__ import annotations

import functools
import io
import json

import pytest
import torch
from tiny import PAIRS, build_tiny_tokenizer, llama_config, write_pairs

from align import cli, generation, models
from align.sections import ModelConfig
from align.use import ChatConfig, chat

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """A second tiny Llama with other weights (the model --compare sets against the first)."""
    from transformers import LlamaForCausalLM

    out = tmp_path_factory.mktemp("other")
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(5)
    LlamaForCausalLM(llama_config(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@functools.cache
def loaded(model_dir):
    cfg = ModelConfig(name_or_path=str(model_dir), dtype="fp32")
    return models.load_tokenizer(cfg), models.load_causal_lm(cfg).eval()


def greedy(model_dir, messages: list[dict]) -> str:
    """The model's greedy reply to `messages`, computed apart from align chat."""
    tokenizer, model = loaded(model_dir)
    done = generation.generate(model, tokenizer, [messages], max_new_tokens=NEW_TOKENS, temperature=0.0)
    return done.texts[0].strip()


def run_chat(monkeypatch, capsys, args: list[str], lines: list[str]):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = cli.main(["chat", *args, "--temperature", "0", "--max-new-tokens", str(NEW_TOKENS), "--num-threads", "1"])
    return code, capsys.readouterr()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_multi_turn_chat_with_reset_and_save(tiny_model_dir, tmp_path, monkeypatch, capsys):
    first, after_reset = tmp_path / "first.json", tmp_path / "after.json"
    code, seen = run_chat(monkeypatch, capsys, [str(tiny_model_dir)], [
        "what is the capital of france?", "and the dog?", f"/save {first}", f"/save {first}/not-a-dir/x.json",
        "/reset", "hello", f"/save {after_reset}", "/oops", "/quit", "never read"])
    assert code == 0
    one = greedy(tiny_model_dir, [user("what is the capital of france?")])
    two = greedy(tiny_model_dir, [user("what is the capital of france?"), assistant(one), user("and the dog?")])
    assert one and two and two != greedy(tiny_model_dir, [user("and the dog?")])  # the second turn saw the first
    assert json.loads(first.read_text()) == [user("what is the capital of france?"), assistant(one),
                                             user("and the dog?"), assistant(two)]
    assert json.loads(after_reset.read_text()) == [user("hello"), assistant(greedy(tiny_model_dir, [user("hello")]))]
    assert f"{one}\n" in seen.out and f"{two}\n" in seen.out  # streamed as generated
    assert "conversation cleared" in seen.out and "unknown command '/oops'" in seen.out
    assert f"could not save to {first}/not-a-dir/x.json: Not a directory" in seen.out
    assert "Traceback" not in seen.err


def test_system_prompt_from_the_option_and_from_the_chat(tiny_model_dir, tmp_path, monkeypatch, capsys):
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    code, _ = run_chat(monkeypatch, capsys, [str(tiny_model_dir), "--system", "be brief"], [
        "hello", f"/save {before}", "/system say yes", "hello", f"/save {after}"])
    assert code == 0
    system = {"role": "system", "content": "be brief"}
    assert json.loads(before.read_text()) == [system, user("hello"),
                                              assistant(greedy(tiny_model_dir, [system, user("hello")]))]
    switched = {"role": "system", "content": "say yes"}
    assert json.loads(after.read_text())[:2] == [switched, user("hello")]  # a new system prompt starts over


def test_compare_answers_every_turn_with_both_models_labelled(tiny_model_dir, other_model_dir, tmp_path,
                                                             monkeypatch, capsys):
    saved = tmp_path / "both.json"
    code, seen = run_chat(monkeypatch, capsys, [str(tiny_model_dir), "--compare", str(other_model_dir)],
                          ["hello", f"/save {saved}"])  # then end of input, no /quit
    assert code == 0 and "Traceback" not in seen.err
    first, second = tiny_model_dir.name, other_model_dir.name
    replies = {first: greedy(tiny_model_dir, [user("hello")]), second: greedy(other_model_dir, [user("hello")])}
    assert replies[first] != replies[second]
    assert json.loads(saved.read_text()) == {label: [user("hello"), assistant(reply)]
                                             for label, reply in replies.items()}
    assert f"[{first}] {replies[first]}\n[{second}] {replies[second]}\n" in seen.out


def test_ctrl_c_ends_the_chat_quietly(tiny_model_dir):
    session = chat.load(ChatConfig(model=str(tiny_model_dir), max_new_tokens=NEW_TOKENS, temperature=0.0,
                                     num_threads=1))
    typed = iter(["hello"])
    shown = []

    def read(prompt):
        line = next(typed, None)
        if line is None:
            raise KeyboardInterrupt
        return line

    chat.interact(session, read, shown.append)
    assert "".join(shown).endswith(greedy(tiny_model_dir, [user("hello")]) + "\n\n")


def test_prompt_mode_prints_only_the_greedy_reply(tiny_model_dir, monkeypatch, capsys):
    code, seen = run_chat(monkeypatch, capsys, [str(tiny_model_dir), "--prompt", "one two three"], [])
    assert code == 0
    assert seen.out == greedy(tiny_model_dir, [user("one two three")]) + "\n"


def test_prompt_mode_is_greedy_without_a_temperature(tiny_model_dir):
    assert ChatConfig(model="m", prompt="hi").sampling_temperature() == 0.0
    assert ChatConfig(model="m").sampling_temperature() > 0


def test_prompts_file_answers_every_prompt(tiny_model_dir, tmp_path, monkeypatch, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:3])
    out = tmp_path / "replies.jsonl"
    code, seen = run_chat(monkeypatch, capsys, [str(tiny_model_dir), "--prompts", str(pairs), "--out", str(out)], [])
    assert code == 0 and f"wrote 3 replies to {out}" in seen.out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == [[user(prompt)] for prompt, _, _ in PAIRS[:3]]
    assert [row["completion"] for row in rows] == [[assistant(greedy(tiny_model_dir, [user(prompt)]))]
                                                   for prompt, _, _ in PAIRS[:3]]


def test_prompts_without_out_is_refused(tiny_model_dir, monkeypatch, capsys):
    code, seen = run_chat(monkeypatch, capsys, [str(tiny_model_dir), "--prompts", "x.jsonl"], [])
    assert code == 2 and "--prompts FILE needs --out FILE.jsonl" in seen.err
