"""Wall time of the HuggingFaceModel notebook flow, from ``deploy()`` to the first streamed token.

Runs the seed notebook ``tests/e2e/notebooks/hf_tgi.py`` unchanged (the SDK's own 30 s deploy
waiter included, unless ``--poll`` shortens it) against a fresh ``streamhost serve`` with the
default model, with the environment ``streamhost sdk-env`` produces. Meanwhile a watcher polls
DescribeEndpoint every 0.1 s to see when the platform itself reported InService, so the figure
splits into: platform ready, ``deploy()`` returned (the SDK's waiter), first streamed token.
The SDK's status marks tell how many DescribeEndpoint calls its waiter made ("!" alone: the
first one already said InService).

    .venv/bin/python bench/sdk_notebook.py                 # default model, real 30 s waiter, 1 run
    .venv/bin/python bench/sdk_notebook.py --repeats 3 --model /path/to/hf-folder

Writes bench/results/sdk-notebook-<timestamp>.json and its .png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests" / "e2e" / "notebooks"))

from notebook_runner import notebook_env, run_notebook  # noqa: E402

from _common import machine_info, plot_path, write_results  # noqa: E402
from streamhost.cli.sdk_env import build_sdk_environment  # noqa: E402
from streamhost.launcher import ServerProcess, free_port, streamhost_command  # noqa: E402

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # resolves to the bundled default model, offline


class InServiceWatcher(threading.Thread):
    """Records the wall time at which each endpoint was first described as InService."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import boto3

        self.client = boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1",
                                   aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
        self.in_service: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for item in self.client.list_endpoints()["Endpoints"]:
                    if item["EndpointStatus"] == "InService":
                        self.in_service.setdefault(item["EndpointName"], time.time())
            except Exception:
                pass
            self.stop.wait(0.1)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.6 * len(runs)))
    for i, run in enumerate(runs):
        ax.barh(i, run["first_token_s"], color="#9ecae1", label="first streamed token" if i == 0 else None)
        ax.barh(i, run["deploy_s"], color="#4292c6", label="deploy() returned (SDK waiter)" if i == 0 else None)
        ax.barh(i, run["platform_in_service_s"], color="#08519c", label="platform InService" if i == 0 else None)
    ax.set_yticks(range(len(runs)), [f"run {i + 1}" for i in range(len(runs))])
    ax.set_xlabel("seconds since deploy() was called")
    ax.set_title("HuggingFaceModel notebook on streamhost: deploy() to first streamed token")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="HF_MODEL_ID for the notebook (default: the bundled model)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--poll", type=int, default=None, help="shorten the SDK waiter's 30 s poll (default: unchanged)"
    )
    parser.add_argument("--tokens", type=int, default=32, help="max_new_tokens of the notebook's requests")
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="sdk-notebook-bench-") as tmp:
        state = Path(tmp)
        port = free_port()
        platform = ServerProcess(
            streamhost_command("serve", "--port", str(port), "--state-dir", str(state)), port, state / "platform.log",
            env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1"), cwd=REPO,
        ).start(timeout=120)  # fmt: skip
        url = platform.url
        watcher = InServiceWatcher(url)
        watcher.start()
        try:
            sdk = build_sdk_environment(url, state / "sdk", state_dir=state, credentials=("x", "x"))
            env = notebook_env(sdk.env, NOTEBOOK_MODEL=args.model, NOTEBOOK_TOKENS=str(args.tokens),
                               OMP_WAIT_POLICY="PASSIVE")  # fmt: skip
            for i in range(args.repeats):
                print(
                    f"run {i + 1}/{args.repeats}: deploying {args.model} through the SDK ...",
                    file=sys.stderr,
                    flush=True,
                )
                run = run_notebook("hf_tgi", env, poll=args.poll, timeout=900)
                r = run.result
                ready_at = watcher.in_service.get(r["endpoint"])
                runs.append({
                    "deploy_s": r["deploy_s"],
                    "first_token_s": r["first_token_s"],
                    "platform_in_service_s": (ready_at - r["started_at"]) if ready_at else None,
                    "describe_calls": len(run.status_marks),
                    "status_marks": run.status_marks,
                    "tokens": len(r["sdk_tokens"]),
                })  # fmt: skip
                print(f"  {runs[-1]}", file=sys.stderr, flush=True)
        finally:
            watcher.stop.set()
            platform.stop()

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    import sagemaker

    data = {
        "what": "HuggingFaceModel notebook (tests/e2e/notebooks/hf_tgi.py): deploy() -> first streamed token",
        "model": args.model,
        "sdk_poll_s": args.poll or 30,
        "sdk_waiter": "unchanged" if args.poll is None else f"Session.wait_for_endpoint poll={args.poll}",
        "sagemaker_version": sagemaker.__version__,
        "runs": runs,
        "median": {k: median(k) for k in ("platform_in_service_s", "deploy_s", "first_token_s")},
        "machine": machine_info(),
    }
    stamped = write_results(data, "sdk-notebook")
    plot(runs, plot_path(stamped))
    print(f"median: {data['median']}\nwrote {stamped} and {plot_path(stamped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
