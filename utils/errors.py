"""Error classes that the command line reports as one line instead of a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class InputError(ValueError):
    """Bad user input (config, data, checkpoint): the message names the file, key or entry."""


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a non-finite loss); the message is one line."""


def exit_on_input_error(run: Callable[[Any], Any], args: Any) -> None:
    """``run(args)`` for a command-line tool: bad input ends it with one ``error:`` line and
    exit code 2, as ``main.py`` does."""
    try:
        run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
