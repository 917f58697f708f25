"""data_formats must stay torch-free and cheap to import: the CLI and data checks never pay for torch."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import sys
import data_formats
from data_formats import FORMATS, KINDS, Source, convert, inspect, load_source, prepare, render_inspect
heavy = sorted(m for m in ("torch", "transformers", "trl", "datasets", "pyarrow") if m in sys.modules)
assert not heavy, heavy
"""


def test_import_does_not_load_torch_transformers_datasets_or_pyarrow():
    result = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, check=False,
                            env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert result.returncode == 0, result.stderr


def test_public_names():
    import data_formats

    assert data_formats.KINDS == ("sft", "preference", "kto", "prompt")
    assert {"alpaca", "sharegpt", "openai_chat", "hh_rlhf", "trl_preference", "sharegpt_preference",
            "paired_answers", "pairwise_judged", "scored_completions", "kto"} <= set(data_formats.FORMATS)
    for fmt in data_formats.FORMATS.values():
        assert fmt.kind in data_formats.KINDS
        assert "prompt" in fmt.kinds
        assert set(fmt.required) <= set(fmt.columns)
