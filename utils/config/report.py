"""How every part of the config speaks to the user: :class:`ConfigError` (one line), the
did-you-mean hint, and once-only notes of upstream keys that load but are ignored.
Kept apart so the schema, the loaders and the vision JSON reader share it without cycles."""
from __future__ import annotations

import difflib
import os
import sys
import typing
from typing import Any

from utils.errors import InputError


class ConfigError(InputError):
    """A configuration problem, reported as one line."""


def did_you_mean(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


_NOTED: set[tuple[str, str]] = set()  # (key, repr(value)) already noted in this process


def note_ignored(where: str, key: str, value: Any, why: str) -> None:
    """Say once per process, on rank 0 only, that an upstream key which must keep loading
    unchanged is not used (so a value the user set does not pass silently)."""
    if (key, repr(value)) in _NOTED or os.environ.get("RANK", "0") != "0":
        return
    _NOTED.add((key, repr(value)))
    print(f"warning: {where}: key '{key}' ({value!r}) is ignored: {why}", file=sys.stderr)
