"""The example files under examples/data are clean, small and in the shapes the README quick start relies on."""

from __future__ import annotations

from pathlib import Path

from data_formats import inspect, load_source, prepare

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def words(text: str) -> int:
    return len(text.split())


def test_sft_chat_example():
    report = inspect(str(EXAMPLES / "sft_chat.jsonl"))
    assert (report["format"], report["kind"], report["valid"], report["rows"]) == ("openai_chat", "sft", True, 40)
    rows = load_source(str(EXAMPLES / "sft_chat.jsonl"), "sft").rows
    assert sum(len(r["messages"]) > 3 for r in rows) >= 5  # some multi-turn
    assert sum(r["messages"][0]["role"] == "system" for r in rows) >= 5  # some with a system prompt
    assert all(words(m["content"]) < 60 for r in rows for m in r["messages"] if m["role"] == "assistant")


def test_preference_example():
    report = inspect(str(EXAMPLES / "preference.jsonl"))
    assert (report["format"], report["kind"], report["valid"], report["rows"]) == (
        "trl_preference", "preference", True, 40)
    rows = load_source(str(EXAMPLES / "preference.jsonl"), "preference").rows
    assert all(len(r["chosen"]) == len(r["rejected"]) == 1 for r in rows)
    assert all(words(r["chosen"][0]["content"]) < 60 and words(r["rejected"][0]["content"]) < 60 for r in rows)
    assert len({r["prompt"][-1]["content"] for r in rows}) == 40


def test_prompts_and_alpaca_examples():
    prompts = inspect(str(EXAMPLES / "prompts.jsonl"))
    assert (prompts["format"], prompts["kind"], prompts["valid"], prompts["rows"]) == ("trl_prompt", "prompt", True, 20)
    alpaca = inspect(str(EXAMPLES / "alpaca_sample.json"))
    assert (alpaca["format"], alpaca["kind"], alpaca["valid"], alpaca["rows"]) == ("alpaca", "sft", True, 10)


def test_examples_prepare_for_the_quick_start():
    prepared = prepare([str(EXAMPLES / "sft_chat.jsonl")], "sft", eval_fraction=0.1, dedup=True)
    assert (len(prepared.train), len(prepared.eval)) == (36, 4)
    assert prepared.report.removed == {}


def test_readme_lists_every_format_and_reason():
    from data_formats import FORMATS
    from data_formats.problems import REASONS

    readme = (Path(__file__).resolve().parents[2] / "data_formats" / "README.md").read_text(encoding="utf-8")
    table_rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `")}
    for name, fmt in FORMATS.items():
        assert f"| {', '.join(fmt.kinds)} |" in table_rows[name], name
    for reason in REASONS:
        assert f"| `{reason}` |" in readme
