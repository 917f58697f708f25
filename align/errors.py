"""Error types for mistakes a user can fix. The CLI turns them into `error: ...` and exit code 2."""

from data_formats.errors import DataFormatError


class AlignError(Exception):
    """Base class for user-facing errors raised by `align`."""


class ConfigError(AlignError, ValueError):
    """A config file, override or cross-field rule is wrong."""


class ModelError(AlignError):
    """A model could not be found, pulled or loaded as configured."""


USER_ERRORS = (AlignError, DataFormatError)

__all__ = ["USER_ERRORS", "AlignError", "ConfigError", "DataFormatError", "ModelError"]
