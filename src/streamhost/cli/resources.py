"""``streamhost endpoints list|describe|delete|logs`` and ``streamhost models list|describe|delete``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from streamhost.cli.common import (
    CliError,
    add_json_option,
    add_url_option,
    console,
    format_time,
    print_json,
    print_table,
    run,
    session_from,
    status_style,
    strip_metadata,
)
from streamhost.client.sdk import Predictor, Session, default_state_dir


def add_parsers(sub: Any) -> None:
    endpoints = sub.add_parser("endpoints", help="list, describe, delete endpoints and read their logs")
    esub = endpoints.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = esub.add_parser("list", help="list endpoints")
    p.add_argument("--name-contains", metavar="TEXT", help="only endpoints whose name contains TEXT")
    p.add_argument("--status", metavar="STATUS", help="only endpoints in STATUS (e.g. InService)")
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(list_endpoints, args))

    p = esub.add_parser("describe", help="show an endpoint: status, variants, instances, model")
    p.add_argument("name", metavar="NAME")
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(describe_endpoint, args))

    p = esub.add_parser("delete", help="delete an endpoint and its endpoint config")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--delete-model", action="store_true", help="also delete the model(s) it serves")
    p.add_argument("--keep-config", action="store_true", help="keep the endpoint config")
    p.add_argument("--no-wait", action="store_true", help="return without waiting for the endpoint to be gone")
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(delete_endpoint, args))

    p = esub.add_parser("logs", help="print the model-server logs of an endpoint's instances")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--tail", type=int, default=100, metavar="N", help="last N lines of each log (0: all; default 100)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    p.add_argument(
        "--state-dir", help="the platform's state directory (default: $STREAMHOST_STATE_DIR or ~/.streamhost)"
    )
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(endpoint_logs, args))

    models = sub.add_parser("models", help="list, describe, delete models")
    msub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = msub.add_parser("list", help="list models")
    p.add_argument("--name-contains", metavar="TEXT", help="only models whose name contains TEXT")
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(list_models, args))

    p = msub.add_parser("describe", help="show a model: image and environment")
    p.add_argument("name", metavar="NAME")
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(describe_model, args))

    p = msub.add_parser("delete", help="delete a model")
    p.add_argument("name", metavar="NAME")
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(delete_model, args))


def _paginate(session: Session, operation: str, key: str, **filters: Any) -> list[dict[str, Any]]:
    params = {k: v for k, v in filters.items() if v}
    paginator = session.sagemaker.get_paginator(operation)
    items: list[dict[str, Any]] = []
    for page in paginator.paginate(**params):
        items.extend(page.get(key, []))
    return items


# --------------------------------------------------------------------------- endpoints


def list_endpoints(args: argparse.Namespace) -> int:
    items = _paginate(
        session_from(args), "list_endpoints", "Endpoints", NameContains=args.name_contains, StatusEquals=args.status
    )
    if args.json:
        print_json(items)
        return 0
    rows = [
        (
            e["EndpointName"],
            status_style(e.get("EndpointStatus", "")),
            format_time(e.get("CreationTime")),
            format_time(e.get("LastModifiedTime")),
        )
        for e in items
    ]
    print_table("Endpoints", ["Name", "Status", "Created", "Modified"], rows, empty="no endpoints")
    return 0


def describe_endpoint(args: argparse.Namespace) -> int:
    session = session_from(args)
    description = strip_metadata(session.sagemaker.describe_endpoint(EndpointName=args.name))
    instances = _instances_view(session, args.name)
    if args.json:
        print_json({**description, "Instances": instances})
        return 0
    out = console()
    out.print(f"[bold]{description['EndpointName']}[/bold]  {status_style(description.get('EndpointStatus', ''))}")
    out.print(f"  ARN:      {description.get('EndpointArn', '')}")
    out.print(f"  Config:   {description.get('EndpointConfigName', '')}")
    out.print(f"  Created:  {format_time(description.get('CreationTime'))}")
    out.print(f"  Modified: {format_time(description.get('LastModifiedTime'))}")
    if description.get("FailureReason"):
        out.print(f"  [red]Failure:[/red]  {description['FailureReason']}", markup=True)
    models = _variant_models(session, description.get("EndpointConfigName"))
    rows = []
    for v in description.get("ProductionVariants") or []:
        statuses = ", ".join(s.get("Status", "") for s in v.get("VariantStatus") or [])
        rows.append(
            (
                v.get("VariantName"),
                models.get(v.get("VariantName"), ""),
                f"{v.get('CurrentInstanceCount', '')}/{v.get('DesiredInstanceCount', '')}",
                v.get("CurrentWeight", ""),
                statuses,
            )
        )
    if rows:
        print_table("Variants", ["Variant", "Model", "Instances", "Weight", "Status"], rows)
    placed = [(v["name"], i) for v in (instances or {}).get("variants", []) for i in v.get("instances", [])]
    if placed:
        where = (instances or {}).get("placement", {}).get("kind", "local")
        print_table(
            f"Instances ({where})", ["Instance", "State", "Node", "Address", "In flight", "Restarts"],
            [(i["name"], i["state"], i.get("node") or "", i.get("address") or "", i.get("in_flight", ""),
              i.get("restarts", "")) for _, i in placed],
        )  # fmt: skip
    return 0


def _instances_view(session: Session, name: str) -> dict[str, Any] | None:
    """Where the endpoint's instances run (the platform's operator view, signed like boto3 signs), or None."""
    import boto3
    import httpx
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    boto_session = getattr(session, "_boto_session", None) or boto3.session.Session()
    credentials = boto_session.get_credentials() or Credentials("streamhost", "streamhost")
    url = f"{session.endpoint_url.rstrip('/')}/_streamhost/endpoints/{name}"
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(credentials.get_frozen_credentials(), "sagemaker", session.region).add_auth(request)
    try:
        response = httpx.get(url, headers=dict(request.headers.items()), timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _variant_models(session: Session, config_name: str | None) -> dict[str, str]:
    """Variant name -> model name, or {} when the config is gone (it may be deleted while in use)."""
    from botocore.exceptions import ClientError

    if not config_name:
        return {}
    try:
        config = session.sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError:
        return {}
    return {v.get("VariantName"): v.get("ModelName", "") for v in config.get("ProductionVariants") or []}


def wait_deleted(session: Session, name: str, timeout: float = 120.0) -> bool:
    """Poll until DescribeEndpoint says the endpoint is gone (the ``endpoint_deleted`` waiter's rule)."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    pause = 0.1
    while time.monotonic() < deadline:
        try:
            session.sagemaker.describe_endpoint(EndpointName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ValidationError"):
                return True
            raise
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    return False


def delete_endpoint(args: argparse.Namespace) -> int:
    session = session_from(args)
    predictor = Predictor(args.name, session=session)
    config_name, models = predictor._lookup()
    predictor.delete_endpoint(delete_endpoint_config=not args.keep_config)
    gone = True
    if not args.no_wait:
        with console(stderr=True).status(f"Deleting endpoint {args.name} ..."):
            gone = wait_deleted(session, args.name)
    if args.delete_model:
        predictor.delete_model()
    deleted = {
        "EndpointName": args.name,
        "EndpointConfigName": None if args.keep_config else config_name,
        "ModelNames": models if args.delete_model else [],
        "Gone": gone if not args.no_wait else None,
    }
    if args.json:
        print_json(deleted)
        return 0
    parts = [f"endpoint {args.name}"]
    if not args.keep_config:
        parts.append(f"endpoint config {config_name}")
    if args.delete_model and models:
        parts.append("model " + ", ".join(models))
    console().print("Deleted " + ", ".join(parts) + ("" if gone else " (the endpoint is still draining)"))
    return 0


# --------------------------------------------------------------------------- logs


def find_logs(state_dir: Path, endpoint: str) -> list[Path]:
    """The instance log files of ``endpoint`` under the platform's state directory."""
    logs = state_dir / "logs"
    candidates: list[Path] = []
    if (logs / endpoint).is_dir():
        candidates = [p for p in (logs / endpoint).rglob("*") if p.is_file()]
    elif logs.is_dir():
        candidates = [p for p in logs.rglob("*") if p.is_file() and p.name.startswith(endpoint)]
    return sorted(candidates, key=lambda p: (p.stat().st_mtime, str(p)))


def _tail(path: Path, lines: int) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return text if lines <= 0 else text[-lines:]


def endpoint_logs(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    if not state_dir.is_dir():
        raise CliError(
            f"no platform state directory at {state_dir}: logs are read from the machine running "
            "`streamhost serve`; pass its --state-dir"
        )
    paths = find_logs(state_dir, args.name)
    if not paths:
        raise CliError(f"no logs for endpoint {args.name!r} under {state_dir / 'logs'}")
    many = len(paths) > 1
    for path in paths:
        if many:
            sys.stdout.write(f"==> {path.relative_to(state_dir)} <==\n")
        for line in _tail(path, args.tail):
            sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if args.follow:
        _follow(state_dir, args.name, {p: p.stat().st_size for p in paths}, many)
    return 0


def _follow(state_dir: Path, endpoint: str, offsets: dict[Path, int], label: bool) -> None:
    """Print what is appended to the logs (and new instances' logs) until interrupted."""
    while True:
        for path in find_logs(state_dir, endpoint):
            size = path.stat().st_size
            start = offsets.get(path, 0)
            if size < start:  # rotated or truncated
                start = 0
            if size > start:
                with path.open("rb") as handle:
                    handle.seek(start)
                    chunk = handle.read(size - start).decode("utf-8", errors="replace")
                prefix = f"[{path.name}] " if label else ""
                for line in chunk.splitlines():
                    sys.stdout.write(prefix + line + "\n")
                sys.stdout.flush()
            offsets[path] = size
        time.sleep(0.5)


# --------------------------------------------------------------------------- models


def list_models(args: argparse.Namespace) -> int:
    items = _paginate(session_from(args), "list_models", "Models", NameContains=args.name_contains)
    if args.json:
        print_json(items)
        return 0
    rows = [(m["ModelName"], format_time(m.get("CreationTime"))) for m in items]
    print_table("Models", ["Name", "Created"], rows, empty="no models")
    return 0


def describe_model(args: argparse.Namespace) -> int:
    description = strip_metadata(session_from(args).sagemaker.describe_model(ModelName=args.name))
    if args.json:
        print_json(description)
        return 0
    out = console()
    container = description.get("PrimaryContainer") or (description.get("Containers") or [{}])[0]
    out.print(f"[bold]{description['ModelName']}[/bold]")
    out.print(f"  ARN:     {description.get('ModelArn', '')}")
    out.print(f"  Created: {format_time(description.get('CreationTime'))}")
    out.print(f"  Image:   {container.get('Image', '')}")
    if container.get("ModelDataUrl"):
        out.print(f"  Data:    {container['ModelDataUrl']}")
    env = container.get("Environment") or {}
    if env:
        print_table("Environment", ["Key", "Value"], sorted(env.items()))
    return 0


def delete_model(args: argparse.Namespace) -> int:
    session_from(args).sagemaker.delete_model(ModelName=args.name)
    if args.json:
        print_json({"ModelName": args.name, "Deleted": True})
    else:
        console().print(f"Deleted model {args.name}")
    return 0
