"""`align report` on hand-made run dirs: the sections, numbers with intervals, escaped text, embedded images, the
notes for what a run lacks, and the user errors."""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import subprocess
import sys

import pytest
import yaml
from report_runs import HOSTILE

from align import cli, config
from align.errors import ConfigError
from align.report import ReportConfig, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def images(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_pipeline_run_report_has_every_section_in_finishing_order(hand_made_run):
    out = run(ReportConfig(run_dir=str(hand_made_run)))
    assert out == hand_made_run / "report.html"
    page = out.read_text(encoding="utf-8")

    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == ["overview", "lineage", "evaluation", "replies", "stage-sft", "stage-reward", "stage-dpo"]
    assert "pipeline run, 3 stages" in page

    # Lineage: base model, upstream stage, fingerprints and tokenizer.
    assert "<code>base/model</code> → sft → reward → dpo" in page
    assert "(stage sft)" in page and "<code>fp-dpo</code>" in page and "<code>hash-reward</code>" in page
    assert "<code>vocab123</code>" in page
    # Eval: a win rate with its interval beside it, the judge, baselines per source file.
    assert "0.620 [0.550, 0.690]" in page
    assert "judge <code>reward:run/reward</code>; on the pairs: accuracy 0.66" in page
    assert "0.510 [0.420, 0.600]" in page and "<b>harmless.jsonl</b>" in page and "0.300 [0.200, 0.410]" in page
    # The reward stage's held-out accuracy beside its baselines.
    assert "Held-out accuracy beside its baselines (40 pairs)" in page and "0.650 [0.500, 0.775]" in page
    # Probe: each variant with its interval, the failing one flagged, the verdict.
    assert "0.700 [0.600, 0.800]" in page and "0.200 [0.100, 0.300]" in page
    assert 'class="badge bad">FAIL<' in page and 'class="badge bad">failed<' in page
    # Health and cost.
    assert "kl_blowup" in page and "KL 12.5 &gt; 10 &lt;rising&gt;" in page
    assert "peak_memory_gb" in page and "1.25" in page and "812.2" in page and "5.0 min" in page
    assert "1,000 trainable of 4,000 (25.0%) · LoRA" in page
    assert "dropped: train: longer than train.max_length=64" in page

    # Every piece of run text escaped: no script element at all, the hostile text shown as text.
    assert "<script" not in page.lower()
    assert html.escape(HOSTILE, quote=True) in page
    assert html.escape("say <b>hi</b>") in page

    # Images: data URIs of real PNGs (curves drawn from metrics.jsonl, and the eval chart).
    sources = images(page)
    assert len(sources) >= 4
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "http://" not in page and "https://" not in page and "file:" not in page


def test_replies_side_by_side_across_stages_and_steps(hand_made_run):
    page = run(ReportConfig(run_dir=str(hand_made_run), samples=2)).read_text(encoding="utf-8")
    across = page[page.index('id="replies"'):page.index('id="stage-sft"')]
    assert re.findall(r"<th>([^<]*)</th>", across) == ["prompt", "sft", "dpo"]
    assert "dpo says (5)" in across and html.escape(f"{HOSTILE} (4)", quote=True) in across
    assert "first try" not in across, "a stage's column holds its last sampling step"
    assert "2 of 3 prompts" in across
    sft = page[page.index('id="stage-sft"'):page.index('id="stage-reward"')]
    assert "<th>step 0</th><th>step 4</th>" in sft and "first try (0)" in sft


def test_missing_sections_are_left_out_with_a_note(hand_made_run):
    page = run(ReportConfig(run_dir=str(hand_made_run))).read_text(encoding="utf-8")
    reward = page[page.index('id="stage-reward"'):page.index('id="stage-dpo"')]
    assert "No replies sampled while training" in reward
    assert "Reward-model probe" in reward and "No probe.json" not in reward
    assert "No eval.json" not in reward, "a reward model is a judge, not a policy to evaluate"
    sft = page[page.index('id="stage-sft"'):page.index('id="stage-reward"')]
    assert "No eval.json in this stage" in sft and "<code>align eval --policy DIR</code>" in sft
    assert "No probe.json" not in sft, "only a reward stage is expected to have a probe"


def test_a_stage_dir_still_running(tmp_path):
    stage = tmp_path / "sft-out"
    stage.mkdir()
    (stage / "config.yaml").write_text(yaml.safe_dump({"stage": "sft", "model": {"name_or_path": "base/model"}}))
    (stage / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n" + '{"step": 2, "lo')
    out = run(ReportConfig(run_dir=str(stage), out=str(tmp_path / "nested" / "r.html")))
    page = out.read_text(encoding="utf-8")
    assert re.findall(r'<section id="([^"]+)"', page) == ["overview", "lineage", "stage-sft-out"]
    assert "sft stage" in page and 'class="badge warn">not finished<' in page
    assert "No summary.json yet" in page and "No replies sampled while training" in page
    assert "<code>base/model</code> → sft-out" in page
    assert len(images(page)) == 1, "the curves drawn from the part of metrics.jsonl written so far"


def test_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        run(ReportConfig(run_dir=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="holds no stage output"):
        run(ReportConfig(run_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="samples: must be >= 1"):
        run(ReportConfig(run_dir=str(tmp_path), samples=0))


def test_config_gives_command_line_options_and_importing_stays_light():
    parser = argparse.ArgumentParser()
    config.add_options(parser, ReportConfig)
    args = parser.parse_args(["--run-dir", "runs/x", "--samples", "3"])
    assert config.given_options(args, ReportConfig) == ['run_dir="runs/x"', "samples=3"]
    assert "(default: <run_dir>/report.html)" in parser.format_help()
    heavy = ("import sys, align.report; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'transformers')))")
    loaded = subprocess.run([sys.executable, "-c", heavy], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_align_report_run_dir_writes_the_page_and_refuses_a_second_run_dir(hand_made_run, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert cli.main(["report", str(hand_made_run), "--out", str(out), "samples=2"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and f"wrote {out}" in capsys.readouterr().out
    assert cli.main(["report", str(hand_made_run), "--run-dir", str(hand_made_run)]) == 2
    assert "run_dir: given twice" in capsys.readouterr().err
    assert cli.main(["report", str(hand_made_run), "other"]) == 2
    assert "unexpected argument 'other'" in capsys.readouterr().err
