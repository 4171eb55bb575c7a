"""Acceptance check: the issues' performance goals applied to benchmark results files.

The measuring scripts (engine.py, serve.py, gateway.py, ...) record what they measured and nothing
else; whether a figure is good enough is decided here, so a goal can change without touching the
tool that measures, and an old results file can be checked against today's goals.

Usage::

    .venv/bin/python bench/check.py                      # the newest result of every benchmark
    .venv/bin/python bench/check.py bench/results/serve-20261202-103616.json

Exit status 1 when a goal with a figure is missed (goals without a comparable figure are listed as
"n/a" and do not fail the check).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, latest_result_path


@dataclass(frozen=True)
class Goal:
    """One figure compared with a threshold (``at_least`` True: value >= threshold)."""

    issue: str
    name: str
    figure: Callable[[dict[str, Any]], float | None]
    threshold: float
    at_least: bool

    def verdict(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            value = self.figure(data)
        except (KeyError, TypeError, IndexError, AttributeError):
            value = None
        met = None if value is None else (value >= self.threshold if self.at_least else value <= self.threshold)
        sign = ">=" if self.at_least else "<="
        return {
            "issue": self.issue,
            "name": self.name,
            "value": value,
            "goal": f"{sign} {self.threshold:g}",
            "met": met,
        }


def _engine_ratio(index: int) -> Callable[[dict[str, Any]], float | None]:
    # Files written before the goals moved here call the same list "targets".
    return lambda d: (d.get("ratios") or d["targets"])[index]["value"]


def _serve_at(level: int, key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda d: d["comparison"]["by_level"][str(level)][key]


def _serve_http_cost(d: dict[str, Any]) -> float | None:
    eng = d.get("engine_comparison") or {}
    # Files written before the goals moved here mark a like-for-like figure by a non-null "met".
    comparable = eng.get("comparable", eng.get("met") is not None)
    return eng.get("total_cost") if comparable else None


def _gateway(level: str, key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    return lambda d: d["overhead"][level][key] * scale


GOALS: dict[str, list[Goal]] = {
    "engine": [
        Goal("#2", "decode tok/s, 1 stream / hand loop", _engine_ratio(0), 0.90, True),
        Goal("#2", "total tok/s, most streams / transformers CB", _engine_ratio(1), 1.2, True),
        Goal("#2", "total tok/s, most streams / 1 stream", _engine_ratio(2), 4.0, True),
    ],
    "serve": [
        Goal("#3", "16 streams: output tok/s / baseline", _serve_at(16, "output_tok_s_ratio"), 1.2, True),
        Goal("#3", "16 streams: TTFT p99 / baseline", _serve_at(16, "ttft_p99_ratio"), 1.0, False),
        Goal("#3", "1 stream: HTTP cost against the in-process engine", _serve_http_cost, 0.05, False),
    ],
    "ray_placement": [
        Goal("#18", "tok/s lost on Ray vs local", lambda d: -d["load"]["ray_vs_local"]["tok_s_change"], 0.03, False),
        Goal(
            "#18", "TTFT p50 added on Ray vs local", lambda d: d["load"]["ray_vs_local"]["ttft_p50_change"], 0.03, False
        ),
        Goal(
            "#18", "TTFT p99 added on Ray vs local", lambda d: d["load"]["ray_vs_local"]["ttft_p99_change"], 0.03, False
        ),
    ],
}


def gateway_goals(data: dict[str, Any]) -> list[Goal]:
    """Per measured level: added TTFT p50 <= 5 ms and tok/s loss <= 3% through the gateway."""
    goals = []
    for level in data.get("overhead", {}):
        goals.append(
            Goal("#4", f"{level} streams: TTFT p50 added (ms)", _gateway(level, "ttft_p50_added_ms"), 5.0, False)
        )
        goals.append(Goal("#4", f"{level} streams: tok/s loss", _gateway(level, "tok_s_change", -1.0), 0.03, False))
    return goals


def benchmark_of(data: dict[str, Any], path: Path) -> str:
    return str(data.get("benchmark") or path.stem.split("-")[0])


def verdicts(data: dict[str, Any], benchmark: str | None = None) -> list[dict[str, Any]]:
    """The goals of ``benchmark`` (default: the file's own ``benchmark`` field) applied to ``data``."""
    kind = benchmark or str(data.get("benchmark", ""))
    goals = gateway_goals(data) if kind == "gateway" else GOALS.get(kind, [])
    return [goal.verdict(data) for goal in goals]


def format_verdict(v: dict[str, Any]) -> str:
    value = "n/a" if v["value"] is None else f"{v['value']:.3g}"
    met = {True: "met", False: "MISSED", None: "n/a"}[v["met"]]
    return f"{v['issue']:>4} {v['name']}: {value} (goal {v['goal']}) -> {met}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="results files (default: the newest of each benchmark)")
    args = parser.parse_args(argv)
    files = args.files or [
        p for p in (latest_result_path(name) for name in ("engine", "serve", "gateway", "ray_placement")) if p
    ]
    missed = False
    for path in files:
        data = json.loads(path.read_text())
        print(
            f"{path.relative_to(RESULTS_DIR.parent.parent) if path.is_relative_to(RESULTS_DIR.parent.parent) else path}:"
        )
        for v in verdicts(data, benchmark_of(data, path)):
            print("  " + format_verdict(v))
            missed = missed or v["met"] is False
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
