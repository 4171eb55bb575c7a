"""``streamhost bench engine|serve|... [args]``: run a benchmark script from the checkout's bench/ folder.

The benchmarks live beside the source (they are not part of the installed package), so this finds
``bench/<name>.py`` in the current directory or the checkout the package was installed from, and
runs it with the same Python, passing the remaining arguments through.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from streamhost.cli.common import CliError, run


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark from bench/ (engine, serve, ...)",
        description="Run bench/NAME.py with the given arguments (try `streamhost bench engine --help`).",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="benchmark: " + (", ".join(available()) or "none found"))
    p.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the benchmark")
    p.set_defaults(_handler=lambda args: run(bench, args))


def bench_dirs() -> list[Path]:
    """Where bench/ may be: the working directory, then the checkout of an editable install."""
    package = Path(__file__).resolve().parent.parent  # src/streamhost
    return [Path.cwd() / "bench", package.parent.parent / "bench"]


def available() -> list[str]:
    names: set[str] = set()
    for folder in bench_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))
    return sorted(names)


def find_script(name: str) -> Path | None:
    for folder in bench_dirs():
        script = folder / f"{name}.py"
        if script.is_file() and not name.startswith("_"):
            return script
    return None


def bench(args: argparse.Namespace) -> int:
    names = available()
    if not args.name:
        raise CliError(
            f"name a benchmark: {', '.join(names)}" if names else "no bench/ folder found (run from a checkout)"
        )
    script = find_script(args.name)
    if script is None:
        hint = f"; available: {', '.join(names)}" if names else "; no bench/ folder found (run from a checkout)"
        raise CliError(f"no benchmark named {args.name!r}{hint}")
    return subprocess.call([sys.executable, str(script), *args.bench_args])
