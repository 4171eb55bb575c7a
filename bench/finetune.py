"""Fine-tuning benchmark: a LoRA job on SmolLM2-135M-Instruct through the platform vs plain Trainer + peft.

One run measures, on this machine:

1. **The platform**: ``streamhost serve`` (real model servers), CreateTrainingJob through boto3
   (smollm2, LoRA with the catalog defaults, ~200 synthetic instruction examples, ``--steps``
   steps, 10% held out for eval loss), waited for with boto3's waiter. Wall time from
   CreateTrainingJob to Completed, the trainer's training tokens/s (non-padding tokens over the
   ``Trainer.train()`` wall time), train and eval loss curves from the artifact's metrics.
2. **Base vs tuned**: both deployed as endpoints, 20 held-out examples streamed from each,
   ROUGE-L per row and overall (``streamhost.training.evaluate``, as ``streamhost evaluate``).
3. **The peer**: the same rows, model, LoRA config and TrainingArguments under plain
   ``transformers.Trainer`` + peft in a fresh process, no platform in between: its tokens/s.
   Overhead of the job machinery = 1 - platform tokens/s / plain tokens/s (target <= 5%).

The peer runs ``--repeats`` times around the platform run (before and after) and the median is
quoted: the machine is shared, so single runs drift. Writes ``bench/results/finetune-<stamp>.json``
and ``.png`` (loss curves; tokens/s side by side; ROUGE-L base vs tuned).

    nice -n 10 .venv/bin/python bench/finetune.py --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, plot_path, write_results

REPO = Path(__file__).resolve().parents[1]
KEY, SECRET = "bench", "bench-secret"


def hyperparameters(steps: int) -> dict[str, str]:
    return {"instruction_tuned": "true", "max_steps": str(steps), "validation_split_ratio": "0.1",
            "save_steps": "10", "logging_steps": "1"}  # fmt: skip


# --------------------------------------------------------------------------- the peer: plain Trainer + peft


def plain_trainer(data: Path, steps: int, out: Path) -> dict[str, Any]:
    """Same model, rows, LoRA and TrainingArguments as the job, straight through transformers.Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

    from streamhost.catalog.specs import load_catalog
    from streamhost.engine.loader import ensure_default_model
    from streamhost.training import data as td
    from streamhost.training.hyperparameters import parse
    from streamhost.training.trainer import collate, plan_steps, training_arguments

    hp = parse(hyperparameters(steps), load_catalog().get("smollm2").training_defaults)
    base = ensure_default_model()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    examples = td.load_examples(td.channel_file(data, "train"), True)
    train, held = td.split(examples, hp["validation_split_ratio"], hp["train_data_split_seed"])
    train_rows, eval_rows = (
        td.tokenize(train, tokenizer, hp["max_input_length"]),
        td.tokenize(held, tokenizer, hp["max_input_length"]),
    )
    total = plan_steps(hp, len(train_rows))
    trainer = Trainer(model=model, args=training_arguments(hp, out, total, bool(eval_rows)), train_dataset=train_rows,
                      eval_dataset=eval_rows, data_collator=collate(tokenizer.pad_token_id))  # fmt: skip
    import resource

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    started, cpu_started = time.monotonic(), cpu_seconds()
    trainer.train()
    seconds = time.monotonic() - started
    cpu = cpu_seconds() - cpu_started
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "cpu_seconds": cpu,
        "tokens_per_cpu_second": tokens / cpu,
        "steps": trainer.state.global_step,
    }


def run_plain(data: Path, steps: int) -> dict[str, Any]:
    """``plain_trainer`` in a fresh interpreter (no state shared with the platform's processes)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        subprocess.run([sys.executable, __file__, "--plain-only", str(data), "--steps", str(steps), "--plain-out", str(out)],
                       check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})  # fmt: skip
        return json.loads(out.read_text())


# --------------------------------------------------------------------------- the platform run


def platform_run(data: Path, held_out: Path, steps: int, workdir: Path, examples: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    os.environ.update({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET})
    import _platform_fixtures as fixtures

    fixtures.ACCESS_KEY, fixtures.SECRET_KEY = KEY, SECRET
    from streamhost.client.sdk import Predictor, Session
    from streamhost.training.evaluate import load_eval_examples, run_comparison

    platform = fixtures.PlatformProcess(workdir / "state", container_command=fixtures.REAL_COMMAND,
                                        env={"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}).start()  # fmt: skip
    try:
        sm = platform.sagemaker()
        job = fixtures.unique("bench-lora")
        started = time.monotonic()
        sm.create_training_job(
            TrainingJobName=job, RoleArn="arn:aws:iam::123456789012:role/bench", HyperParameters=hyperparameters(steps),
            AlgorithmSpecification={"TrainingImage": "streamhost/trainer", "TrainingInputMode": "File"},
            InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}}}],
            OutputDataConfig={"S3OutputPath": (workdir / "out").as_uri()}, Environment={"HF_MODEL_ID": "smollm2"},
        )  # fmt: skip
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=job, WaiterConfig={"Delay": 1, "MaxAttempts": 7200}
        )
        wall = time.monotonic() - started
        described = sm.describe_training_job(TrainingJobName=job)
        if described["TrainingJobStatus"] != "Completed":
            raise SystemExit(f"the job ended {described['TrainingJobStatus']}: {described.get('FailureReason')}")
        metrics = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
        with tarfile.open(workdir / "out" / job / "output" / "model.tar.gz") as tar:
            history = json.load(tar.extractfile("training_metrics.json"))["history"]
        phases = {t["Status"]: round((t["EndTime"] - t["StartTime"]).total_seconds(), 2)  # boto3 gives datetimes
                  for t in described["SecondaryStatusTransitions"] if "EndTime" in t}  # fmt: skip
        limits = {"MAX_TOTAL_TOKENS": "1024", "MAX_INPUT_TOKENS": "512"}
        base = fixtures.deploy(
            sm, fixtures.unique("bench-base"), env={"HF_MODEL_ID": "smollm2", **limits}, startup_timeout=600
        )
        tuned = fixtures.deploy(sm, fixtures.unique("bench-tuned"), env=limits, startup_timeout=600,
                                model_data=described["ModelArtifacts"]["S3ModelArtifacts"])  # fmt: skip
        session = Session(endpoint_url=platform.url)
        parameters = {"max_new_tokens": 32, "do_sample": False}

        def answer(endpoint: str):
            predictor = Predictor(endpoint, session=session)
            return lambda prompt: "".join(predictor.stream({"inputs": prompt, "parameters": parameters}))

        report = run_comparison(load_eval_examples(held_out), answer(base), answer(tuned), base, tuned,
                                lambda i, r: print(f"  eval {i + 1}: base {r.rouge_l_base:.2f} tuned {r.rouge_l_tuned:.2f}", flush=True))  # fmt: skip
        return {
            "job": job, "wall_seconds": wall, "phases_seconds": phases, "metrics": metrics, "history": history,
            "train_examples": examples, "rouge_l": {"base": report.rouge_l_base, "tuned": report.rouge_l_tuned},
            "evaluation": report.to_dict(),
        }  # fmt: skip
    finally:
        platform.stop()


# --------------------------------------------------------------------------- interleaved overhead check


def overhead_pairs(data: Path, steps: int, pairs: int, workdir: Path) -> dict[str, Any]:
    """Alternate a platform job and a plain run ``pairs`` times (same steps), so drifting machine load
    hits both sides alike; which side goes first alternates too. The overhead is taken from the median
    of each side, and from the median of the per-pair ratios (each pair ran under similar load)."""
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    os.environ.update({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET})
    import _platform_fixtures as fixtures

    fixtures.ACCESS_KEY, fixtures.SECRET_KEY = KEY, SECRET
    platform = fixtures.PlatformProcess(workdir / "ab-state", container_command=fixtures.REAL_COMMAND,
                                        env={"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}).start()  # fmt: skip
    ours: list[float] = []
    plain: list[float] = []
    ours_cpu: list[float] = []  # tokens per CPU second: what each side costs, whatever else ran meanwhile
    plain_cpu: list[float] = []
    try:
        sm = platform.sagemaker()
        for pair in range(pairs):
            if pair % 2:  # plain first in odd pairs: a trend in the machine's load favours neither side
                peer = run_plain(data, steps)
                plain.append(peer["tokens_per_second"])
                plain_cpu.append(peer["tokens_per_cpu_second"])
            job = fixtures.unique("ab")
            sm.create_training_job(
                TrainingJobName=job, RoleArn="arn:aws:iam::123456789012:role/bench", HyperParameters=hyperparameters(steps),
                AlgorithmSpecification={"TrainingImage": "streamhost/trainer", "TrainingInputMode": "File"},
                InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}}}],
                OutputDataConfig={"S3OutputPath": (workdir / "ab-out").as_uri()}, Environment={"HF_MODEL_ID": "smollm2"},
            )  # fmt: skip
            sm.get_waiter("training_job_completed_or_stopped").wait(
                TrainingJobName=job, WaiterConfig={"Delay": 1, "MaxAttempts": 7200}
            )
            metrics = {
                m["MetricName"]: m["Value"]
                for m in sm.describe_training_job(TrainingJobName=job)["FinalMetricDataList"]
            }
            ours.append(metrics["train_tokens_per_second"])
            ours_cpu.append(metrics["tokens"] / metrics["train_cpu_seconds"])
            if not pair % 2:
                peer = run_plain(data, steps)
                plain.append(peer["tokens_per_second"])
                plain_cpu.append(peer["tokens_per_cpu_second"])
            print(f"  pair {pair + 1}: platform {ours[-1]:.1f} tokens/s ({ours_cpu[-1]:.1f} per CPU s), "
                  f"plain {plain[-1]:.1f} tokens/s ({plain_cpu[-1]:.1f} per CPU s)", flush=True)  # fmt: skip
    finally:
        platform.stop()
    overhead = (1 - statistics.median(ours) / statistics.median(plain)) * 100
    paired = [(1 - o / p) * 100 for o, p in zip(ours, plain)]
    cpu_overhead = (1 - statistics.median(ours_cpu) / statistics.median(plain_cpu)) * 100
    print(f"overhead: {overhead:+.1f}% (medians); per pair {', '.join(f'{x:+.1f}%' for x in paired)}, "
          f"median {statistics.median(paired):+.1f}%; per CPU second: {cpu_overhead:+.1f}%", flush=True)  # fmt: skip
    return {
        "steps": steps,
        "platform_tokens_per_second": ours,
        "plain_tokens_per_second": plain,
        "overhead_percent": overhead,
        "paired_overhead_percent": paired,
        "paired_overhead_median_percent": statistics.median(paired),
        "platform_tokens_per_cpu_second": ours_cpu,
        "plain_tokens_per_cpu_second": plain_cpu,
        "cpu_overhead_percent": cpu_overhead,
    }


# --------------------------------------------------------------------------- plot


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = result["platform"]["history"]
    fig, (curves, speed, rouge) = plt.subplots(1, 3, figsize=(15, 4.2))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    curves.plot(*zip(*train), label="train loss")
    if evals:
        curves.plot(*zip(*evals), marker="o", label="eval loss")
    curves.set(xlabel="step", ylabel="loss", title="SmolLM2-135M LoRA: loss")
    curves.legend()
    curves.grid(alpha=0.3)
    plain = [r["tokens_per_second"] for r in result["plain_runs"]]
    ours = result["platform"]["metrics"]["train_tokens_per_second"]
    speed.bar(["streamhost job", "plain Trainer+peft\n(median)"], [ours, statistics.median(plain)], color=["C0", "C7"])
    speed.scatter([1] * len(plain), plain, color="k", zorder=3, s=12, label="plain runs")
    speed.set(ylabel="training tokens/s", title=f"throughput (overhead {result['overhead_percent']:+.1f}%)")
    speed.legend()
    scores = result["platform"]["rouge_l"]
    rouge.bar(["base", "tuned"], [scores["base"], scores["tuned"]], color=["C7", "C2"])
    rouge.set(ylim=(0, 1), ylabel="ROUGE-L F1 (mean)", title=f"{result['held_out']} held-out examples")
    fig.suptitle(f"fine-tune benchmark, {result['steps']} steps (shared machine, load average at start {' / '.join(f'{x:.1f}' for x in result['machine']['load_average_at_start'] or [])})",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_overhead(check: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = range(1, len(check["platform_tokens_per_second"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    ax.bar([p - width / 2 for p in pairs], check["platform_tokens_per_second"], width, label="streamhost job")
    ax.bar(
        [p + width / 2 for p in pairs],
        check["plain_tokens_per_second"],
        width,
        label="plain Trainer + peft",
        color="C7",
    )
    ax.set(xlabel="pair (run in this order)", ylabel="training tokens/s", xticks=list(pairs),
           title=f"{check['steps']} steps each; overhead of medians {check['overhead_percent']:+.1f}%")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument(
        "--repeats", type=int, default=2, help="plain Trainer runs (half before, half after the platform run)"
    )
    parser.add_argument(
        "--overhead-pairs",
        type=int,
        default=0,
        metavar="N",
        help="only the overhead check: N alternating platform / plain runs of --steps steps",
    )
    parser.add_argument("--plain-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plain-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.plain_only:
        with tempfile.TemporaryDirectory() as scratch:
            args.plain_out.write_text(json.dumps(plain_trainer(args.plain_only, args.steps, Path(scratch))))
        return 0
    from streamhost.training.samples import instruction_set, write_jsonl

    info = machine_info()
    if args.overhead_pairs:
        with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
            train, _held = instruction_set(args.examples, args.held_out, seed=0)
            data = write_jsonl(train, Path(scratch) / "data" / "train.jsonl").parent
            check = overhead_pairs(data, args.steps, args.overhead_pairs, Path(scratch))
        path = write_results({"benchmark": "finetune-overhead", "model": "SmolLM2-135M-Instruct", "machine": info,
                              "note": "shared 2-core machine; pairs alternate so load drift hits both sides", **check},
                             "finetune-overhead")  # fmt: skip
        plot_overhead(check, plot_path(path))
        print(json.dumps({**check, "results": str(path)}, indent=1))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        work = Path(scratch)
        train, held = instruction_set(args.examples, args.held_out, seed=0)
        data = write_jsonl(train, work / "data" / "train.jsonl").parent
        held_out = write_jsonl(held, work / "test.jsonl")
        plain_runs = []
        before = args.repeats - args.repeats // 2
        for i in range(before):
            print(f"plain Trainer + peft, run {i + 1} ...", flush=True)
            plain_runs.append(run_plain(data, args.steps))
            print(f"  {plain_runs[-1]['tokens_per_second']:.1f} tokens/s", flush=True)
        print("the platform: CreateTrainingJob -> Completed, then base vs tuned ...", flush=True)
        ours = platform_run(data, held_out, args.steps, work, args.examples)
        print(
            f"  {ours['metrics']['train_tokens_per_second']:.1f} tokens/s, wall {ours['wall_seconds']:.0f} s",
            flush=True,
        )
        for i in range(args.repeats // 2):
            print(f"plain Trainer + peft, run {before + i + 1} ...", flush=True)
            plain_runs.append(run_plain(data, args.steps))
            print(f"  {plain_runs[-1]['tokens_per_second']:.1f} tokens/s", flush=True)
    plain_median = statistics.median(r["tokens_per_second"] for r in plain_runs)
    overhead = (1 - ours["metrics"]["train_tokens_per_second"] / plain_median) * 100
    result = {
        "benchmark": "finetune", "model": "SmolLM2-135M-Instruct", "method": "LoRA (catalog defaults)",
        "steps": args.steps, "train_examples": args.examples, "held_out": args.held_out,
        "platform": ours, "plain_runs": plain_runs, "plain_tokens_per_second_median": plain_median,
        "overhead_percent": overhead, "machine": info,
        "note": "shared 2-core machine with other agents' jobs running; figures drift run to run",
    }  # fmt: skip
    path = write_results(result, "finetune")
    plot(result, plot_path(path))
    print(json.dumps({"wall_seconds": ours["wall_seconds"], "train_tokens_per_second": ours["metrics"]["train_tokens_per_second"],
                      "plain_tokens_per_second_median": plain_median, "overhead_percent": round(overhead, 2),
                      "rouge_l": ours["rouge_l"], "results": str(path)}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
