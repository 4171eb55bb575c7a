"""Training jobs in the platform's SQLite file (a table of their own beside models and endpoints).

Its own connection to the same WAL database, so the endpoint store stays untouched; every write
is one committed statement before the caller answers, as there. Status changes go through
``update(..., only_from=...)`` so a Stop racing the trainer's own end cannot both win.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS training_jobs (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    arn TEXT NOT NULL,
    request TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    status TEXT NOT NULL,
    secondary_status TEXT NOT NULL,
    transitions TEXT NOT NULL DEFAULT '[]',
    failure_reason TEXT,
    metrics TEXT NOT NULL DEFAULT '[]',
    artifact TEXT NOT NULL,
    pid INTEGER,
    created REAL NOT NULL,
    modified REAL NOT NULL,
    started REAL,
    ended REAL
);
"""


@dataclass(frozen=True)
class TrainingJobRecord:
    name: str
    arn: str
    request: dict[str, Any]  # the CreateTrainingJob request minus TrainingJobName
    hyperparameters: dict[str, Any]  # the full typed set the trainer runs with
    status: str  # TrainingJobStatus
    secondary_status: str
    transitions: list[dict[str, Any]]
    failure_reason: str | None
    metrics: list[dict[str, Any]]  # FinalMetricDataList
    artifact: str  # S3ModelArtifacts
    pid: int | None
    created: float
    modified: float
    started: float | None
    ended: float | None


_JSON_COLUMNS = {"request", "hyperparameters", "transitions", "metrics"}
_SETTABLE = {"status", "secondary_status", "transitions", "failure_reason", "metrics", "pid", "started", "ended"}


class TrainingJobStore:
    def __init__(self, path: str | Path) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _record(row: sqlite3.Row | None) -> TrainingJobRecord | None:
        if row is None:
            return None
        values = {k: (json.loads(row[k]) if k in _JSON_COLUMNS else row[k]) for k in row.keys()}
        return TrainingJobRecord(**values)

    def insert(self, name: str, arn: str, request: dict[str, Any], hyperparameters: dict[str, Any], artifact: str,
               transitions: list[dict[str, Any]]) -> bool:  # fmt: skip
        now = time.time()
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO training_jobs (name, arn, request, hyperparameters, status, secondary_status, transitions,"
                    " artifact, created, modified) VALUES (?, ?, ?, ?, 'InProgress', 'Starting', ?, ?, ?, ?)",
                    (name, arn, json.dumps(request), json.dumps(hyperparameters), json.dumps(transitions), artifact, now, now),
                )  # fmt: skip
        except sqlite3.IntegrityError:
            return False
        return True

    def get(self, name: str) -> TrainingJobRecord | None:
        with self._lock:
            return self._record(self._db.execute("SELECT * FROM training_jobs WHERE name = ?", (name,)).fetchone())

    def list(self) -> list[TrainingJobRecord]:
        with self._lock:
            return [self._record(r) for r in self._db.execute("SELECT * FROM training_jobs").fetchall()]  # type: ignore[misc]

    def update(self, name: str, only_from: Iterable[str] | None = None, **fields: Any) -> bool:
        """Set columns in one statement, only while the status is in ``only_from`` (if given)."""
        unknown = set(fields) - _SETTABLE
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)}")
        sets = ["modified = ?"]
        args: list[Any] = [time.time()]
        for column, value in fields.items():
            sets.append(f"{column} = ?")
            args.append(json.dumps(value) if column in _JSON_COLUMNS else value)
        sql = f"UPDATE training_jobs SET {', '.join(sets)} WHERE name = ?"
        args.append(name)
        if only_from is not None:
            states = list(only_from)
            sql += f" AND status IN ({', '.join('?' for _ in states)})"
            args.extend(states)
        with self._lock:
            return self._db.execute(sql, args).rowcount == 1
