"""Dataset formatters: read alignment datasets in their native formats and turn them into TRL's canonical rows.

Torch-free and tokenizer-agnostic. See README.md in this folder for the formats, row shapes and policies.
"""

from data_formats.conversion import convert
from data_formats.errors import DataFormatError, InvalidRowsError
from data_formats.formats import FORMATS, Format
from data_formats.inspection import inspect, render_inspect
from data_formats.kinds import KINDS
from data_formats.loading import Loaded, Source, load_source, source_kind
from data_formats.preparing import Prepared, PrepareReport, prepare
from data_formats.report import Problem, Report

__all__ = [
    "FORMATS",
    "KINDS",
    "DataFormatError",
    "Format",
    "InvalidRowsError",
    "Loaded",
    "PrepareReport",
    "Prepared",
    "Problem",
    "Report",
    "Source",
    "convert",
    "inspect",
    "load_source",
    "prepare",
    "render_inspect",
    "source_kind",
]
