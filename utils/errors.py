"""Error classes that the command line reports as one line instead of a traceback."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input (config, data, checkpoint): the message names the file, key or entry."""


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a non-finite loss); the message is one line."""
