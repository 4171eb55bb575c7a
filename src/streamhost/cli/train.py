"""``streamhost train MODEL --train DATA`` and ``streamhost jobs list|describe|stop|logs|hyperparameters``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamhost.cli.common import (
    CliError,
    add_json_option,
    add_url_option,
    format_time,
    print_json,
    print_table,
    run,
    session_from,
    strip_metadata,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model on your data (a training job), optionally deploy the result",
        description="Fine-tune MODEL (catalog id such as smollm2, hub id or folder) with LoRA (or fully, lora_r=0) "
        "on a .jsonl/.txt file: CreateTrainingJob, then follow its log until it ends.",
    )
    p.add_argument("model", metavar="MODEL", help="base model: catalog id, hub id or local folder")
    p.add_argument(
        "--train", required=True, metavar="DATA", help="training data: a .jsonl/.txt file or folder, file:// or s3://"
    )
    p.add_argument("--validation", metavar="DATA", help="validation data (default: a split of --train)")
    p.add_argument("--hp", action="append", default=[], metavar="K=V",
                   help="hyperparameter (repeatable), e.g. --hp instruction_tuned=true --hp max_steps=50")  # fmt: skip
    p.add_argument("--instruction-tuned", action="store_true", help="shorthand for --hp instruction_tuned=true")
    p.add_argument("--name", help="job name (default: derived from the model, with a timestamp)")
    p.add_argument(
        "--output", help="S3OutputPath: s3://bucket/prefix, file:// or a folder (default <state-dir>/training-output)"
    )
    p.add_argument("--max-run", type=int, default=86400, metavar="SECONDS", help="MaxRuntimeInSeconds (default 86400)")
    p.add_argument("--accept-eula", action="store_true", help="accept a gated base model's licence")
    p.add_argument("--no-wait", action="store_true", help="return once the job is created")
    p.add_argument(
        "--deploy", metavar="ENDPOINT", nargs="?", const="", help="deploy the tuned model when the job completes"
    )
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(train, args))

    jobs = sub.add_parser("jobs", help="list, describe, stop training jobs and read their logs")
    jsub = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = jsub.add_parser("list", help="list training jobs")
    p.add_argument("--name-contains", metavar="TEXT")
    p.add_argument("--status", metavar="STATUS", help="InProgress, Completed, Failed, Stopping or Stopped")
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(list_jobs, args))
    for action, text, handler in (("describe", "show a job: status, transitions, metrics, artifact", describe_job),
                                  ("stop", "stop a job after its current step (its weights so far are kept)", stop_job)):  # fmt: skip
        p = jsub.add_parser(action, help=text)
        p.add_argument("name", metavar="NAME")
        add_json_option(p)
        add_url_option(p)
        p.set_defaults(_handler=lambda args, h=handler: run(h, args))
    p = jsub.add_parser("logs", help="print a job's log (progress: step, loss, tokens/s, ETA)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(job_logs, args))
    p = jsub.add_parser("hyperparameters", help="a model's fine-tuning hyperparameters: defaults and allowed values")
    p.add_argument("model", metavar="MODEL", nargs="?", help="catalog id (default: the generic defaults)")
    add_json_option(p)
    p.set_defaults(_handler=lambda args: run(show_hyperparameters, args))


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--hp expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def train(args: argparse.Namespace) -> int:
    from streamhost.client.training import Estimator, TrainingJobError

    hp = _pairs(args.hp)
    if args.instruction_tuned:
        hp["instruction_tuned"] = "true"
    session = session_from(args)
    estimator = Estimator(
        args.model, hyperparameters=hp, output_path=args.output, session=session, max_run=args.max_run
    )
    channels = {"train": args.train}
    if args.validation:
        channels["validation"] = args.validation
    wait = not args.no_wait
    try:
        estimator.fit(
            channels, wait=wait, logs=wait and not args.json, job_name=args.name, accept_eula=args.accept_eula
        )
    except TrainingJobError as exc:
        if args.json:
            print_json(strip_metadata(estimator.describe()))
        raise CliError(str(exc)) from None
    name = estimator.latest_training_job_name
    if args.json:
        print_json(strip_metadata(estimator.describe()))
    else:
        print(
            f"training job {name}: {'created' if not wait else estimator.describe()['TrainingJobStatus']}",
            file=sys.stderr,
        )
    if args.deploy is not None and wait:
        predictor = estimator.deploy(endpoint_name=args.deploy or None, accept_eula=args.accept_eula)
        print(f"endpoint {predictor.endpoint_name} is InService (the tuned model of {name})", file=sys.stderr)
    return 0


def list_jobs(args: argparse.Namespace) -> int:
    sm = session_from(args).sagemaker
    params: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Descending"}
    if args.name_contains:
        params["NameContains"] = args.name_contains
    if args.status:
        params["StatusEquals"] = args.status
    jobs = [
        j for page in sm.get_paginator("list_training_jobs").paginate(**params) for j in page["TrainingJobSummaries"]
    ]
    if args.json:
        print_json(jobs)
        return 0
    print_table(None, ["Name", "Status", "Secondary", "Created", "Ended"],
                ([j["TrainingJobName"], j["TrainingJobStatus"], j.get("SecondaryStatus", ""), format_time(j["CreationTime"]),
                  format_time(j.get("TrainingEndTime"))] for j in jobs), empty="no training jobs")  # fmt: skip
    return 0


def describe_job(args: argparse.Namespace) -> int:
    description = strip_metadata(session_from(args).sagemaker.describe_training_job(TrainingJobName=args.name))
    if args.json:
        print_json(description)
        return 0
    print(f"{description['TrainingJobName']}: {description['TrainingJobStatus']} ({description['SecondaryStatus']})")
    if description.get("FailureReason"):
        print(f"  failure: {description['FailureReason']}")
    print(f"  model artifact: {description['ModelArtifacts']['S3ModelArtifacts']}")
    for t in description.get("SecondaryStatusTransitions", []):
        print(f"  {format_time(t['StartTime'])}  {t['Status']:<20} {t.get('StatusMessage', '')}")
    for m in description.get("FinalMetricDataList", []):
        print(f"  {m['MetricName']:<24} {m['Value']:g}")
    return 0


def stop_job(args: argparse.Namespace) -> int:
    session_from(args).sagemaker.stop_training_job(TrainingJobName=args.name)
    if args.json:
        print_json({"TrainingJobName": args.name, "Stopping": True})
    else:
        print(f"stopping {args.name}: it ends after its current step and keeps the weights reached so far")
    return 0


def job_logs(args: argparse.Namespace) -> int:
    from streamhost.client.training import follow_log

    status = follow_log(session_from(args), args.name, follow=args.follow)
    return 1 if status == "Failed" and args.follow else 0


def show_hyperparameters(args: argparse.Namespace) -> int:
    from streamhost.client import hyperparameters

    defaults = hyperparameters.retrieve_default(args.model)
    rows = [{**d, "default": defaults[d["name"]]} for d in hyperparameters.describe()]
    if args.json:
        print_json(rows)
        return 0
    print_table(f"hyperparameters{' for ' + args.model if args.model else ''}", ["Name", "Default", "Allowed", "Meaning"],
                ([r["name"], r["default"], r["allowed"], r["help"]] for r in rows))  # fmt: skip
    return 0
