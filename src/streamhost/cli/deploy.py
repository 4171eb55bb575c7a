"""``streamhost deploy MODEL``: a catalog id, a hub id or a local folder, as an endpoint, with progress."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from streamhost.cli.common import (
    CliError,
    add_json_option,
    add_url_option,
    console,
    parse_env,
    print_json,
    run,
    session_from,
)
from streamhost.client.sdk import DEFAULT_DEPLOY_TIMEOUT, CatalogModel, Model, Session, name_from_base, open_catalog


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "deploy",
        help="deploy a model as an endpoint and wait until it serves",
        description="Deploy MODEL (a catalog id such as smollm2, a Hugging Face hub id, or a local model folder) "
        "as an endpoint: CreateModel, CreateEndpointConfig, CreateEndpoint, then wait for InService.",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="catalog id, hub id (org/name) or local model folder")
    p.add_argument("--training-job", metavar="JOB", help="deploy the model a training job produced (instead of MODEL)")
    p.add_argument("--name", help="endpoint name (default: derived from the model, with a timestamp)")
    p.add_argument("--instance-count", type=_positive_int, default=1, help="model-server instances (default 1)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="container environment (repeatable)")
    p.add_argument("--accept-eula", action="store_true", help="accept the model's end-user licence agreement")
    p.add_argument("--image", help="container image (default: the TGI-dialect model server)")
    p.add_argument("--timeout", type=float, default=DEFAULT_DEPLOY_TIMEOUT, help="seconds to wait for InService")
    p.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created")
    p.add_argument("--state-dir", help="platform state directory, for its catalog extension (default ~/.streamhost)")
    add_json_option(p)
    add_url_option(p)
    p.set_defaults(_handler=lambda args: run(deploy, args))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def resolve_model(
    reference: str, session: Session, env: dict[str, str], image: str | None, name: str | None, state_dir: str | None
) -> tuple[CatalogModel | Model, str]:
    """What MODEL names, as something with ``deploy()``, and a label for messages.

    The catalog wins (its id or hub id), then an existing folder, then a hub id (``org/name``).
    Anything else is an unknown catalog id, answered with the closest ids.
    """
    catalog = open_catalog(state_dir)
    model_name = name_from_base(name) if name else None
    entry = catalog.find(reference)
    if entry is not None:
        return CatalogModel(entry.id, session=session, env=env, image=image, name=model_name, catalog=catalog), entry.id
    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CliError(f"{reference} is not a folder: give a model folder (config.json and weights)")
        return Model(path, env=env, image=image, name=model_name, session=session), str(path.resolve())
    if "/" in reference.strip("/"):
        return Model(reference, env=env, image=image, name=model_name, session=session), reference
    catalog.get(reference)  # raises UnknownModelError with suggestions
    raise AssertionError("unreachable")  # pragma: no cover


def deploy(args: argparse.Namespace) -> int:
    session = session_from(args)
    env = parse_env(args.env)
    if bool(args.model) == bool(args.training_job):
        raise CliError("give either MODEL or --training-job JOB")
    if args.training_job:
        from streamhost.client.training import model_for_training_job

        target: Any = model_for_training_job(
            session, args.training_job, name=name_from_base(args.name) if args.name else None, env=env
        )
        label = f"training job {args.training_job}"
    else:
        target, label = resolve_model(args.model, session, env, args.image, args.name, args.state_dir)
    err = console(stderr=True)
    started = time.monotonic()
    seen: list[str] = []

    with err.status(f"Deploying {label} ...", spinner="dots") as spinner:

        def on_status(status: str, description: dict[str, Any]) -> None:
            if not seen or seen[-1] != status:
                seen.append(status)
            counts = [
                f"{v.get('CurrentInstanceCount', 0)}/{v.get('DesiredInstanceCount', args.instance_count)}"
                for v in description.get("ProductionVariants") or []
            ]
            instances = f", instances {' '.join(counts)}" if counts else ""
            spinner.update(
                f"Endpoint [bold]{description.get('EndpointName')}[/bold]: {status}{instances} "
                f"({time.monotonic() - started:.0f} s)"
            )

        predictor = target.deploy(
            instance_count=args.instance_count,
            endpoint_name=args.name,
            accept_eula=args.accept_eula,
            wait=not args.no_wait,
            timeout=args.timeout,
            on_status=on_status,
        )
    name = predictor.endpoint_name
    status = seen[-1] if seen else "Creating"
    if args.json:
        description = predictor.describe()
        print_json(
            {
                "EndpointName": name,
                "EndpointArn": description.get("EndpointArn"),
                "EndpointStatus": description.get("EndpointStatus"),
                "EndpointConfigName": description.get("EndpointConfigName"),
                "ModelName": predictor._model_names[0] if predictor._model_names else None,
                "Model": label,
            }
        )
        return 0
    out = console()
    elapsed = time.monotonic() - started
    eula = " --accept-eula" if args.accept_eula else ""
    out.print(f"Endpoint [bold]{name}[/bold] is {status} ({label}, {elapsed:.1f} s)")
    out.print(f'  streamhost invoke {name} "Hello" --stream{eula}')
    out.print(f"  streamhost chat {name}{eula}")
    out.print(f"  streamhost endpoints delete {name}")
    return 0
