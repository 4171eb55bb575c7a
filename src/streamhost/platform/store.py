"""Durable platform state: models, endpoint configs, endpoints and live instance pids, in SQLite.

Why SQLite in WAL mode with ``synchronous=FULL``: every control-plane write is a committed
transaction before the caller answers, so a platform killed with SIGKILL (or a power cut) finds
every model, config and endpoint on restart. Endpoint status changes go through ``transition``,
a single ``UPDATE ... WHERE status IN (...)``: two tasks racing (a deletion and a creation
finishing) cannot both win, and the loser learns it from the return value.

Names compare case-insensitively (``COLLATE NOCASE``) because AWS ARNs lowercase them: ``MyModel``
and ``mymodel`` would share an ARN, so they are the same resource.
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
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    arn TEXT NOT NULL,
    spec TEXT NOT NULL,
    eula_required INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoint_configs (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    arn TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    arn TEXT NOT NULL,
    config_name TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT,
    deployment TEXT NOT NULL,
    pending TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    modified REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    pid INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL COLLATE NOCASE,
    started REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ModelRecord:
    name: str
    arn: str
    spec: dict[str, Any]  # the CreateModel request minus ModelName
    eula_required: bool
    created: float


@dataclass(frozen=True)
class ConfigRecord:
    name: str
    arn: str
    spec: dict[str, Any]  # the CreateEndpointConfig request minus EndpointConfigName
    created: float


@dataclass(frozen=True)
class EndpointRecord:
    name: str
    arn: str
    config_name: str
    status: str
    failure_reason: str | None
    deployment: dict[str, Any]  # snapshot of the config + models it runs (see control_plane.snapshot)
    pending: dict[str, Any] | None  # the snapshot an UpdateEndpoint is bringing up
    tags: list[dict[str, str]]
    created: float
    modified: float


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class Store:
    """One SQLite file; safe to call from the event loop and from worker threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ helpers

    def _one(self, sql: str, args: Iterable[Any]) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchone()

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _write(self, sql: str, args: Iterable[Any]) -> int:
        """Run one statement in its own transaction; returns the number of rows changed."""
        with self._lock:
            return self._db.execute(sql, tuple(args)).rowcount

    def _insert(self, sql: str, args: Iterable[Any]) -> bool:
        try:
            self._write(sql, args)
        except sqlite3.IntegrityError:
            return False
        return True

    # ------------------------------------------------------------------ models

    @staticmethod
    def _model(row: sqlite3.Row | None) -> ModelRecord | None:
        if row is None:
            return None
        return ModelRecord(row["name"], row["arn"], json.loads(row["spec"]), bool(row["eula_required"]), row["created"])

    def insert_model(self, name: str, arn: str, spec: dict[str, Any], eula_required: bool = False) -> bool:
        """False when a model with this name (any case) exists."""
        return self._insert(
            "INSERT INTO models (name, arn, spec, eula_required, created) VALUES (?, ?, ?, ?, ?)",
            (name, arn, _json(spec), int(eula_required), time.time()),
        )

    def get_model(self, name: str) -> ModelRecord | None:
        return self._model(self._one("SELECT * FROM models WHERE name = ?", (name,)))

    def list_models(self) -> list[ModelRecord]:
        return [self._model(r) for r in self._all("SELECT * FROM models")]  # type: ignore[misc]

    def delete_model(self, name: str) -> bool:
        return self._write("DELETE FROM models WHERE name = ?", (name,)) == 1

    def set_eula_required(self, name: str, required: bool) -> bool:
        """Mark a model as needing ``accept_eula=true`` on every invocation (the catalog fills this)."""
        return self._write("UPDATE models SET eula_required = ? WHERE name = ?", (int(required), name)) == 1

    # ------------------------------------------------------------------ endpoint configs

    @staticmethod
    def _config(row: sqlite3.Row | None) -> ConfigRecord | None:
        if row is None:
            return None
        return ConfigRecord(row["name"], row["arn"], json.loads(row["spec"]), row["created"])

    def insert_config(self, name: str, arn: str, spec: dict[str, Any]) -> bool:
        return self._insert(
            "INSERT INTO endpoint_configs (name, arn, spec, created) VALUES (?, ?, ?, ?)",
            (name, arn, _json(spec), time.time()),
        )

    def get_config(self, name: str) -> ConfigRecord | None:
        return self._config(self._one("SELECT * FROM endpoint_configs WHERE name = ?", (name,)))

    def list_configs(self) -> list[ConfigRecord]:
        return [self._config(r) for r in self._all("SELECT * FROM endpoint_configs")]  # type: ignore[misc]

    def delete_config(self, name: str) -> bool:
        return self._write("DELETE FROM endpoint_configs WHERE name = ?", (name,)) == 1

    # ------------------------------------------------------------------ endpoints

    @staticmethod
    def _endpoint(row: sqlite3.Row | None) -> EndpointRecord | None:
        if row is None:
            return None
        return EndpointRecord(
            name=row["name"],
            arn=row["arn"],
            config_name=row["config_name"],
            status=row["status"],
            failure_reason=row["failure_reason"],
            deployment=json.loads(row["deployment"]),
            pending=json.loads(row["pending"]) if row["pending"] else None,
            tags=json.loads(row["tags"]),
            created=row["created"],
            modified=row["modified"],
        )

    def insert_endpoint(
        self,
        name: str,
        arn: str,
        config_name: str,
        deployment: dict[str, Any],
        tags: list | None = None,
        status: str = "Creating",
    ) -> bool:
        now = time.time()
        return self._insert(
            "INSERT INTO endpoints (name, arn, config_name, status, deployment, tags, created, modified)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, arn, config_name, status, _json(deployment), _json(tags or []), now, now),
        )

    def get_endpoint(self, name: str) -> EndpointRecord | None:
        return self._endpoint(self._one("SELECT * FROM endpoints WHERE name = ?", (name,)))

    def list_endpoints(self) -> list[EndpointRecord]:
        return [self._endpoint(r) for r in self._all("SELECT * FROM endpoints")]  # type: ignore[misc]

    _SETTABLE = {"config_name", "failure_reason", "deployment", "pending"}

    def transition(self, name: str, allowed_from: Iterable[str] | None, to: str, **fields: Any) -> bool:
        """Atomically move endpoint ``name`` to status ``to`` if its status is in ``allowed_from``.

        ``allowed_from=None`` accepts any current status. ``fields`` sets columns in the same
        statement (``failure_reason``, ``config_name``, ``deployment``, ``pending``). Returns False,
        changing nothing, when the endpoint is gone or in another status.
        """
        unknown = set(fields) - self._SETTABLE
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} in a transition")
        sets = ["status = ?", "modified = ?"]
        args: list[Any] = [to, time.time()]
        for column, value in fields.items():
            sets.append(f"{column} = ?")
            args.append(_json(value) if column in ("deployment", "pending") else value)
        sql = f"UPDATE endpoints SET {', '.join(sets)} WHERE name = ?"
        args.append(name)
        if allowed_from is not None:
            states = list(allowed_from)
            sql += f" AND status IN ({', '.join('?' for _ in states)})"
            args.extend(states)
        return self._write(sql, args) == 1

    def delete_endpoint(self, name: str, only_if_status: str | None = None) -> bool:
        if only_if_status is None:
            return self._write("DELETE FROM endpoints WHERE name = ?", (name,)) == 1
        return self._write("DELETE FROM endpoints WHERE name = ? AND status = ?", (name, only_if_status)) == 1

    # ------------------------------------------------------------------ instance pids

    def record_instance(self, pid: int, endpoint: str) -> None:
        """Remember a model-server pid so a restarted platform can stop one left behind."""
        self._write(
            "INSERT OR REPLACE INTO instances (pid, endpoint, started) VALUES (?, ?, ?)", (pid, endpoint, time.time())
        )

    def forget_instance(self, pid: int) -> None:
        self._write("DELETE FROM instances WHERE pid = ?", (pid,))

    def instance_pids(self) -> list[int]:
        return [r["pid"] for r in self._all("SELECT pid FROM instances")]
