"""align.eval.report on a hand-written report: the markdown table and the charts, no model involved."""

from __future__ import annotations

from align.eval import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def column(name: str, **generation) -> dict:
    return {"name": name, "path": name, "generation": {"length_mean": 3.0, "eos_rate": 0.5, **generation},
            "per_sample": {"length": [2, 4]}}


def sample_report() -> dict:
    return {
        "data": {"path": "pairs.jsonl", "format": "trl_preference", "prompts": 2, "pairs": 0,
                 "skipped": {"prompts": {"wrong_type": 1}, "pairs": {}}},
        "settings": {"temperature": 0.0, "max_new_tokens": 8, "seed": 0, "kl_estimator": "k3", "beta": 0.1},
        "judge": {"spec": "rule:x.py:fn"},
        "reference": column("sft"),
        "policies": [column("dpo", win_rate=0.75, win_rate_ci=[0.5, 1.0], kl=0.25)],
    }


def test_markdown_has_a_column_per_model_and_the_skipped_rows():
    markdown = report.render_markdown(sample_report())
    assert "| metric | sft (reference) | dpo |" in markdown
    assert "| win rate vs reference | – | 0.750 [0.500, 1.000] |" in markdown
    assert "2 prompts, 0 preference pairs; skipped as malformed: prompts 1" in markdown
    assert "sampling: greedy" in markdown


def test_charts_without_pairs_leave_the_margin_histogram_out(tmp_path):
    written = report.plot_eval(sample_report(), tmp_path)
    assert [path.name for path in written] == ["eval_summary.png", "eval_lengths.png"]
    assert all(path.read_bytes().startswith(PNG_MAGIC) for path in written)
