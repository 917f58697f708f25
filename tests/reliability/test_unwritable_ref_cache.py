"""An unwritable reference log-prob cache dir is refused before any work (exit 2, one `error:` line naming the dir
and ref_cache=false), not after the whole reference pass."""

from __future__ import annotations

import os

import yaml
from tiny import PAIRS, write_pairs

from align import cli, models


def test_unwritable_cache_dir_is_refused_before_the_models_load(tmp_path, tiny_model_dir, monkeypatch, capsys):
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("not a directory")  # root ignores permission bits: a file where the dir goes blocks anyone
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(blocked))
    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the cache dir was checked")

    monkeypatch.setattr(models, "load_causal_lm", no_load)
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump({
        "stage": "dpo", "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": [str(write_pairs(tmp_path / "train.jsonl", PAIRS[:4]))]},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 2, "max_length": 64},
        "precompute_ref_log_probs": True}))
    assert cli.main(["dpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert os.path.join(str(blocked), "ref_logps") in err and "ref_cache=false" in err
