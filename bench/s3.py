"""Object-store throughput: one large object up and down through the platform's embedded S3 store
and through SeaweedFS (a real S3 server), side by side in one run.

Both are driven by the same client, boto3's transfer manager with its defaults (what
``Session.upload_data``, ``aws s3 cp`` and ``download_file`` use: 8 MiB parts, 10 threads),
over loopback. Each repeat uploads the object to each store and downloads it back, the store
order alternating between repeats so slow drift on a shared machine hits both alike; the
download is checked byte for byte (SHA-256) against the source once per store.

    .venv/bin/python bench/s3.py                  # 500 MB, 3 repeats
    .venv/bin/python bench/s3.py --quick          # 64 MB, 2 repeats

Outputs: ``bench/results/s3-<timestamp>.json`` and its plot ``s3-<timestamp>.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import plot_path, write_results
from streamhost.launcher import ServerProcess, free_port, streamhost_command
from streamhost.testing_seaweedfs import SeaweedFS

BUCKET = "bench-bucket"
MB = 1_000_000


def embedded_platform(folder: Path) -> ServerProcess:
    """``streamhost serve`` (no model) whose embedded store is measured."""
    port = free_port()
    argv = streamhost_command("serve", "--port", str(port), "--state-dir", str(folder / "state"), "--no-auth",
                              "--log-level", "warning")  # fmt: skip
    return ServerProcess(argv, port, folder / "platform.log")


def client(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench", config=Config(s3={"addressing_style": "path"},
                        retries={"max_attempts": 1}))  # fmt: skip


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def make_source(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            piece = min(left, 16 * 1024 * 1024)
            out.write(os.urandom(piece))
            left -= piece


def one_round(s3, source: Path, target: Path, size: int, key: str, config: TransferConfig) -> dict[str, float]:
    start = time.perf_counter()
    s3.upload_file(str(source), BUCKET, key, Config=config)
    uploaded = time.perf_counter()
    s3.download_file(BUCKET, key, str(target), Config=config)
    downloaded = time.perf_counter()
    if target.stat().st_size != size:
        raise RuntimeError(f"downloaded {target.stat().st_size} bytes, expected {size}")
    return {"upload_s": uploaded - start, "download_s": downloaded - uploaded,
            "upload_mb_s": size / MB / (uploaded - start), "download_mb_s": size / MB / (downloaded - uploaded)}  # fmt: skip


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(results["systems"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.38
    for offset, (direction, color) in enumerate((("upload", "#4c72b0"), ("download", "#dd8452"))):
        xs = [i + (offset - 0.5) * width for i in range(len(systems))]
        medians = [results["systems"][s]["median"][f"{direction}_mb_s"] for s in systems]
        ax.bar(xs, medians, width, label=f"{direction} (median)", color=color)
        for x, system in zip(xs, systems):
            runs = [r[f"{direction}_mb_s"] for r in results["systems"][system]["runs"]]
            ax.scatter([x] * len(runs), runs, color="black", s=12, zorder=3)
        for x, system, value in zip(xs, systems, medians):
            top = max(r[f"{direction}_mb_s"] for r in results["systems"][system]["runs"])
            ax.annotate(f"{value:.0f}", (x, top), xytext=(0, 4), textcoords="offset points", ha="center",
                        va="bottom", fontsize=9, fontweight="bold")  # fmt: skip
    highest = max(
        r[k] for v in results["systems"].values() for r in v["runs"] for k in ("upload_mb_s", "download_mb_s")
    )
    ax.set_ylim(0, highest * 1.15)
    ax.set_xticks(range(len(systems)), systems)
    ax.set_ylabel("MB/s")
    ax.set_title(f"{results['size_mb']:.0f} MB object, boto3 transfer manager, loopback ({results['repeats']} repeats)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 MB, 2 repeats")
    parser.add_argument("--plot-only", type=Path, metavar="RESULTS_JSON", help="redraw the plot of a results file")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), plot_path(args.plot_only))
        return 0
    if args.quick:
        args.size_mb, args.repeats = 64, 2
    size = args.size_mb * MB
    config = TransferConfig()  # boto3's defaults: 8 MiB threshold and parts, 10 threads
    work = Path(tempfile.mkdtemp(prefix="streamhost-s3-bench-"))
    source, target = work / "source.bin", work / "download.bin"
    print(f"writing a {args.size_mb} MB random source file in {work}", flush=True)
    make_source(source, size)
    source_sha = sha256_file(source)
    runs: dict[str, list[dict[str, float]]] = {"streamhost embedded": [], "SeaweedFS": []}
    load_start = os.getloadavg()
    platform = embedded_platform(work)
    try:
        with SeaweedFS(work / "seaweedfs") as seaweed:
            platform.start(60)
            clients = {"streamhost embedded": client(platform.url), "SeaweedFS": client(seaweed.url)}
            for s3 in clients.values():
                s3.create_bucket(Bucket=BUCKET)
            names = list(clients)
            for repeat in range(args.repeats):
                order = names if repeat % 2 == 0 else names[::-1]
                for name in order:
                    key = f"object-{repeat}"
                    result = one_round(clients[name], source, target, size, key, config)
                    if repeat < 2 and sha256_file(target) != source_sha:
                        raise RuntimeError(f"{name}: the downloaded object differs from the source")
                    clients[name].delete_object(Bucket=BUCKET, Key=key)
                    runs[name].append(result)
                    print(f"repeat {repeat + 1}/{args.repeats} {name:20s} up {result['upload_mb_s']:7.1f} MB/s  "
                          f"down {result['download_mb_s']:7.1f} MB/s", flush=True)  # fmt: skip
    finally:
        platform.stop()
        shutil.rmtree(work, ignore_errors=True)
    systems = {
        name: {"runs": rs, "median": {k: statistics.median(r[k] for r in rs) for k in rs[0]}}
        for name, rs in runs.items()
    }
    embedded, seaweed = systems["streamhost embedded"]["median"], systems["SeaweedFS"]["median"]
    results = {
        "benchmark": "s3",
        "size_mb": size / MB,
        "repeats": args.repeats,
        "client": "boto3 transfer manager, default TransferConfig (8 MiB parts, 10 threads), loopback",
        "systems": systems,
        "ratios_embedded_over_seaweedfs": {
            "upload": embedded["upload_mb_s"] / seaweed["upload_mb_s"],
            "download": embedded["download_mb_s"] / seaweed["download_mb_s"],
        },
        "machine": {
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "load_average_at_start": list(load_start),
            "load_average_at_end": list(os.getloadavg()),
            "boto3": boto3.__version__,
        },
    }
    stamped = write_results(results, "s3")
    plot(results, plot_path(stamped))
    ratios = results["ratios_embedded_over_seaweedfs"]
    print(f"medians: embedded up {embedded['upload_mb_s']:.0f} / down {embedded['download_mb_s']:.0f} MB/s; "
          f"SeaweedFS up {seaweed['upload_mb_s']:.0f} / down {seaweed['download_mb_s']:.0f} MB/s; "
          f"ratio up {ratios['upload']:.2f}x down {ratios['download']:.2f}x -> {stamped}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
