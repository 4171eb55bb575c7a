"""The trainer process's reports to the platform: one JSON object per line in ``events.jsonl``.

A file rather than a pipe because the platform may restart while a job runs: whoever reads the
job later (DescribeTrainingJob, ``streamhost jobs logs``) still finds every status change,
progress point and the final metrics. Each line is written whole and flushed, so a reader never
sees half an event.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"

# Event types: status (SecondaryStatus + message), progress (step, loss, tokens/s, ETA),
# eval (eval_loss), done (outcome completed|stopped|failed, reason, metrics, artifact).


class EventWriter:
    """Appends events to ``<job_dir>/events.jsonl``."""

    def __init__(self, job_dir: Path) -> None:
        self.path = Path(job_dir) / EVENTS_FILE

    def emit(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, "time": time.time(), **fields}, separators=(",", ":"), default=str)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_events(job_dir: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete events from byte ``offset`` on, and the offset after the last complete line."""
    path = Path(job_dir) / EVENTS_FILE
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for line in data[: end + 1].splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, offset + end + 1
