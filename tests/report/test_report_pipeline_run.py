"""`align report` on a real run: a tiny SFT -> DPO pipeline that samples replies while training."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from tiny import PAIRS, write_pairs

from align import pipeline
from align.report import ReportConfig, run

TRAIN = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "max_length": 64, "save_steps": 2,
         "logging_steps": 1, "num_threads": 1, "lr_scheduler": "constant"}
TRACKING = {"completions_every": 2, "completions_prompts": 2, "completions_max_new_tokens": 4}


@pytest.mark.slow  # 4-8 s; keeps the default suite under 3 minutes (CI runs slow tests too)
def test_report_of_a_tiny_sft_dpo_pipeline(tmp_path, tiny_model_dir):
    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                         {"role": "assistant", "content": c}]}) + "\n"
                                for p, c, _ in PAIRS[:4]))
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:6])
    stages = [{"name": "sft", "config": {"data": {"train": [str(sft_data)]}, "train": TRAIN, "tracking": TRACKING}},
              {"name": "dpo", "config": {"data": {"train": [str(pairs)], "eval_fraction": 0.34}, "train": TRAIN,
                                         "tracking": TRACKING}}]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"stage": "pipeline", "run_dir": str(tmp_path / "run"),
                                    "model": {"name_or_path": str(tiny_model_dir)}, "stages": stages}))
    pipeline.run(pipeline.load(path))

    page = run(ReportConfig(run_dir=str(tmp_path / "run"))).read_text(encoding="utf-8")
    assert re.findall(r'<section id="([^"]+)"', page) == ["overview", "lineage", "evaluation", "replies",
                                                          "stage-sft", "stage-dpo"]
    sft_hash = json.loads((tmp_path / "run" / "sft" / "DONE").read_text())["config_hash"]
    assert f"<code>{sft_hash}</code>" in page and "(stage sft)" in page
    assert f"<code>{tiny_model_dir}</code> → sft → dpo" in page
    assert page.count('class="badge ok">finished<') == 4, "overview and stage facts, both stages"
    assert page.count('class="badge ok">no alerts<') == 2
    assert "frozen copy of the starting policy" in page
    assert "No eval results in this run dir" in page

    across = page[page.index('id="replies"'):page.index('id="stage-sft"')]
    assert re.findall(r"<th>([^<]*)</th>", across) == ["prompt", "sft", "dpo"]
    dpo = page[page.index('id="stage-dpo"'):]
    assert "<th>step 0</th><th>step 2</th>" in dpo
    assert "eval_rewards/accuracies" in dpo

    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) >= 6 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert '<figcaption>loss</figcaption>' in dpo and '<figcaption>rewards</figcaption>' in dpo
