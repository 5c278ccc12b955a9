"""Run logs: a JSON-lines file of steps and evaluations, and console messages on rank 0."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from utils.distributed import is_main_process


def info(msg: str) -> None:
    """Print on the main process only (to stderr, so stdout stays for results)."""
    if is_main_process():
        print(msg, file=sys.stderr, flush=True)


class ScalarSink(Protocol):
    """Where :class:`JsonlLog` mirrors its records (see utils.tensorboard)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlLog:
    """Append-only JSON-lines log; every record gets a ``kind`` and a wall-clock ``time``.

    Only the main process writes. Each line is flushed, so a killed run keeps its log.
    ``scalars`` (e.g. utils.tensorboard.TensorBoardLog) also receives every record, so all
    logging keeps one entry point.
    """

    def __init__(self, path: str | os.PathLike, scalars: ScalarSink | None = None):
        self.path = Path(path)
        self.enabled = is_main_process()
        self.scalars = scalars

    def write(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.scalars is not None:
            self.scalars.write(record)

    def close(self) -> None:
        """Close the scalar sink (the JSON-lines file is closed after every record)."""
        if self.scalars is not None:
            self.scalars.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines log. A last line cut short (the run was killed while
    writing it) is left out; a broken line elsewhere raises ``json.JSONDecodeError``."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    try:
        records += [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        pass
    return records


def format_table(results: dict[str, dict[str, float]], keys: tuple[str, ...] = ("R1", "R5", "R10", "mAP", "mINP")) -> str:
    """Plain-text table, one row per language."""
    head = f"{'lang':<6}" + "".join(f"{k:>8}" for k in keys)
    rows = [f"{lang:<6}" + "".join(f"{m[k]:8.2f}" for k in keys) for lang, m in results.items()]
    return "\n".join([head, *rows])
