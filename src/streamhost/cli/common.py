"""What every client subcommand of the CLI shares: the platform session, output, and error messages.

Errors never end in a traceback: ``run`` turns every expected failure into one line on stderr
(``error: <Code>: <message>`` for the platform's own errors) and a non-zero exit status.
Progress and spinners go to stderr, results to stdout, so ``--json`` output stays parseable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Any

from streamhost.client.sdk import Session, StreamhostError, platform_url

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user-facing failure; the message is printed as is after ``error: ``."""


def add_url_option(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """``--url`` before or after the subcommand (the subcommand's copy leaves an earlier value alone)."""
    parser.add_argument(
        "--url",
        default=None if top_level else argparse.SUPPRESS,
        metavar="URL",
        help="platform URL (default: $STREAMHOST_URL or http://127.0.0.1:8080)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def session_from(args: argparse.Namespace) -> Session:
    return Session(endpoint_url=getattr(args, "url", None))


# --------------------------------------------------------------------------- output


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=_json_default, ensure_ascii=False)


def print_json(value: Any) -> None:
    sys.stdout.write(to_json(value) + "\n")
    sys.stdout.flush()


def strip_metadata(response: Mapping[str, Any]) -> dict[str, Any]:
    """A boto3 response without botocore's ResponseMetadata."""
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def format_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def print_table(title: str | None, columns: list[str], rows: Iterable[Iterable[Any]], empty: str = "none") -> None:
    """A rich table on stdout (or ``empty`` when there are no rows)."""
    from rich.table import Table

    rows = [list(r) for r in rows]
    out = console()
    if not rows:
        out.print(f"[dim]{empty}[/dim]")
        return
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    out.print(table)


def status_style(status: str) -> str:
    color = {"InService": "green", "Failed": "red", "RollingBack": "red", "Deleting": "yellow"}.get(status, "yellow")
    return f"[{color}]{status}[/{color}]"


# --------------------------------------------------------------------------- parsing helpers


def parse_env(pairs: Iterable[str] | None) -> dict[str, str]:
    """``["K=V", ...]`` -> dict; a pair without ``=`` or with an empty key is a CliError."""
    env: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key.strip()] = value
    return env


# --------------------------------------------------------------------------- errors


def format_error(exc: BaseException, url: str | None = None) -> str:
    """One line that says what went wrong, without a traceback."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    from streamhost.catalog.filters import FilterError
    from streamhost.catalog.specs import CatalogError
    from streamhost.catalog.templates import TemplateError
    from streamhost.client.iterators import StreamError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {}) or {}
        code = error.get("Code") or "Error"
        message = str(error.get("Message") or exc)
        original = exc.response.get("OriginalMessage") or error.get("OriginalMessage")
        if original and str(original) not in message:
            message = f"{message}: {original}"
        if "accept_eula" in message and "--accept-eula" not in message:
            message = f"{message} (CLI: add --accept-eula)"
        return f"error: {code}: {message}"
    if isinstance(exc, EndpointConnectionError):
        return f"error: cannot reach the platform at {platform_url(url)}: is `streamhost serve` running? (or set --url / STREAMHOST_URL)"
    if isinstance(exc, ConnectionClosedError):
        return f"error: the platform at {platform_url(url)} closed the connection"
    if isinstance(exc, ReadTimeoutError):
        return f"error: the platform at {platform_url(url)} did not answer in time"
    if isinstance(exc, NoCredentialsError):
        return "error: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, StreamError):
        kind = f"{exc.error_type}: " if exc.error_type else ""
        return f"error: the model failed mid-stream: {kind}{exc.message}"
    if isinstance(exc, (CliError, StreamhostError, CatalogError, FilterError, TemplateError)):
        return f"error: {exc}"
    if isinstance(exc, (ValueError, OSError)):
        return f"error: {exc}"
    return f"error: {type(exc).__name__}: {exc}"


def run(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand, turning failures into one line on stderr and an exit status."""
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `streamhost ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as exc:
        if os.environ.get("STREAMHOST_DEBUG"):
            raise
        sys.stdout.flush()
        sys.stderr.write(format_error(exc, getattr(args, "url", None)) + "\n")
        return EXIT_ERROR
