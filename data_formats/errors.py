"""Errors raised by the dataset formatters."""


class DataFormatError(ValueError):
    """Input data cannot be read or converted; the message names the file, row and reason."""
