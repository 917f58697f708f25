"""Error types for mistakes a user can fix. The CLI turns them into `error: ...` and exit code 2."""

from data_formats.errors import DataFormatError


class AlignError(Exception):
    """Base class for user-facing errors raised by `align`."""


class ConfigError(AlignError, ValueError):
    """A config file, override or cross-field rule is wrong."""


class ModelError(AlignError):
    """A model could not be found, pulled or loaded as configured."""


class Terminated(AlignError):
    """SIGTERM stopped the run at a step boundary, after saving a checkpoint. The CLI exits with 143 (128 + SIGTERM,
    what a shell reports for a process SIGTERM ended), not 2: the run is resumable, nothing was wrong."""

    exit_code = 143


USER_ERRORS = (AlignError, DataFormatError)

__all__ = ["USER_ERRORS", "AlignError", "ConfigError", "DataFormatError", "ModelError", "Terminated"]
