"""Medians and spread over repeated bench/serve.py runs of the same two targets.

One serve.py run gives one p99 per level from a few dozen requests: at 16 streams that is the
slowest request of the opening burst, so a single run cannot tell a 15% difference from the
shared machine's noise. This reads N runs (``bench/serve_vs_commit.sh`` with ``REPEATS=N``) and
reports, per target and level, the median and range over runs of tok/s and TTFT p50/p99, the
per-run candidate/baseline ratios (each run measured both targets interleaved, so its ratio is a
paired comparison), and TTFT percentiles of all runs' requests pooled.

Usage: python bench/serve_repeats.py --candidate A --baseline B [--name N] RESULT.json ...
Writes bench/results/<name>-<timestamp>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import plot_path, write_results

METRICS = ("output_tok_s", "ttft_p50_s", "ttft_p99_s")


def pct(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (as serve.py's)."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def spread(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict[str, Any]], candidate: str, baseline: str) -> dict[str, Any]:
    """Per target and level: spread of each metric over runs, pooled TTFTs; per level: paired ratios."""
    levels = sorted({int(n) for run in runs for info in run["targets"].values() for n in info.get("levels", {})})
    out: dict[str, Any] = {"targets": {}, "ratios": {}}
    for name in (candidate, baseline):
        per_level: dict[str, Any] = {}
        for n in levels:
            rows = [run["targets"].get(name, {}).get("levels", {}).get(str(n)) for run in runs]
            rows = [r for r in rows if r]
            ttfts = [
                rec["ttft_s"] for r in rows for rec in r.get("request_records", []) if rec.get("ttft_s") is not None
            ]
            per_level[str(n)] = {
                **{m: spread([r[m] for r in rows if r.get(m) is not None]) for m in METRICS},
                "pooled_requests": len(ttfts),
                "pooled_ttft_p50_s": pct(ttfts, 50),
                "pooled_ttft_p90_s": pct(ttfts, 90),
                "pooled_ttft_p99_s": pct(ttfts, 99),
            }
        out["targets"][name] = per_level
    for n in levels:
        ratios: dict[str, Any] = {}
        for m in METRICS:
            paired = []
            for run in runs:
                a = run["targets"].get(candidate, {}).get("levels", {}).get(str(n), {}).get(m)
                b = run["targets"].get(baseline, {}).get("levels", {}).get(str(n), {}).get(m)
                if a is not None and b:
                    paired.append(a / b)
            ratios[m] = {**spread(paired), "per_run": paired}
        c, b = out["targets"][candidate][str(n)], out["targets"][baseline][str(n)]
        for m in ("pooled_ttft_p50_s", "pooled_ttft_p99_s"):
            ratios[m] = c[m] / b[m] if c[m] and b[m] else None
        out["ratios"][str(n)] = ratios
    return out


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    titles = {"output_tok_s": "output tok/s", "ttft_p50_s": "TTFT p50 (s)", "ttft_p99_s": "TTFT p99 (s)"}
    for ax, metric in zip(axes, METRICS):
        for offset, (name, color) in zip((-0.08, 0.08), zip(summary["targets"], ("tab:blue", "tab:orange"))):
            for n in summary["targets"][name]:
                values = [
                    run["targets"][name]["levels"][n][metric]
                    for run in runs
                    if run["targets"].get(name, {}).get("levels", {}).get(n)
                ]
                x = [int(n) * (1 + offset)] * len(values)
                ax.scatter(x, values, color=color, alpha=0.6, s=18)
            xs = sorted(int(n) for n in summary["targets"][name])
            med = [summary["targets"][name][str(x)][metric]["median"] for x in xs]
            ax.plot(xs, med, color=color, marker="o", label=f"{name} (median)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(titles[metric])
        ax.legend(fontsize=8)
    fig.suptitle(f"{len(runs)} repeated runs, each interleaved; dots are runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_table(summary: dict[str, Any], candidate: str, baseline: str, n_runs: int) -> None:
    print(f"{n_runs} runs; median [min-max] over runs; ratio = {candidate} / {baseline}, paired per run")
    for n, ratios in summary["ratios"].items():
        for m in METRICS:
            c = summary["targets"][candidate][n][m]
            b = summary["targets"][baseline][n][m]
            r = ratios[m]
            if c["median"] is None or b["median"] is None:
                continue
            print(
                f"{n:>3} streams {m:<13} {candidate} {c['median']:8.3f} [{c['min']:.3f}-{c['max']:.3f}]  "
                f"{baseline} {b['median']:8.3f} [{b['min']:.3f}-{b['max']:.3f}]  "
                f"ratio {r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
            )
        cp, bp = summary["targets"][candidate][n], summary["targets"][baseline][n]
        if cp["pooled_ttft_p99_s"] and bp["pooled_ttft_p99_s"]:
            print(
                f"{n:>3} streams pooled TTFT ({cp['pooled_requests']} vs {bp['pooled_requests']} requests): "
                f"p50 {cp['pooled_ttft_p50_s']:.3f} vs {bp['pooled_ttft_p50_s']:.3f}, "
                f"p99 {cp['pooled_ttft_p99_s']:.3f} vs {bp['pooled_ttft_p99_s']:.3f} "
                f"(ratio {ratios['pooled_ttft_p99_s']:.2f})"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="serve.py result files of the same two targets")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--name", default="serve-repeats", help="results file stem under bench/results")
    args = parser.parse_args(argv)
    runs = [json.loads(f.read_text()) for f in args.files]
    summary = summarize(runs, args.candidate, args.baseline)
    data = {
        "benchmark": "serve-repeats",
        "candidate": args.candidate,
        "baseline": args.baseline,
        "runs": [f.name for f in args.files],
        "commands": [run.get("command") for run in runs],
        "load_average_1m": [run.get("machine", {}).get("load_average_at_start", [None])[0] for run in runs],
        **summary,
    }
    stamped = write_results(data, args.name)
    png = plot(summary, runs, plot_path(stamped))
    print_table(summary, args.candidate, args.baseline, len(runs))
    print(f"wrote {stamped}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
