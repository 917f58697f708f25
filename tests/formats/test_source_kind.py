"""data_formats.source_kind: the kind a source's format gives by itself, as the kto stage uses it to tell unpaired
rows from preference pairs."""

from __future__ import annotations

import json

from data_formats import Source, source_kind


def test_source_kind_detects_pairs_and_unpaired_rows(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    unpaired = tmp_path / "unpaired.jsonl"
    unpaired.write_text(json.dumps({"prompt": "2+2?", "completion": "5", "label": False}) + "\n")
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(json.dumps({"q": "2+2?", "a": "4", "thumbs_up": True}) + "\n")
    assert source_kind(str(pairs)) == "preference"
    assert source_kind(str(unpaired)) == "kto"
    assert source_kind(Source(str(renamed), columns={"prompt": "q", "completion": "a", "label": "thumbs_up"})) == "kto"
    # A format given explicitly is not read: the file need not exist.
    assert source_kind(Source(str(tmp_path / "absent.jsonl"), format="kto")) == "kto"
