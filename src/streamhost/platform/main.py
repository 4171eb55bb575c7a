"""``streamhost serve``: the platform process (control plane, runtime gateway, supervisor)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("STREAMHOST_STATE_DIR", "~/.streamhost"),
        help="database, artifacts and instance logs (default ~/.streamhost, or $STREAMHOST_STATE_DIR)",
    )
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"), help="region used in ARNs")
    parser.add_argument("--account-id", default="123456789012", help="12-digit account id used in ARNs")
    parser.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="verify SigV4 signatures (default: on unless bound to a loopback address)",
    )
    parser.add_argument("--credentials-file", type=Path, help="AWS-style credentials file with the accepted keys")
    parser.add_argument(
        "--s3-endpoint", "--s3-endpoint-url", dest="s3_endpoint_url", metavar="URL",
        default=os.environ.get("STREAMHOST_S3_ENDPOINT") or None,
        help="use this external S3-compatible store (or $STREAMHOST_S3_ENDPOINT) for s3:// model data, the default bucket and uploads instead of "
        "the embedded one (keys: $STREAMHOST_S3_ACCESS_KEY_ID/$STREAMHOST_S3_SECRET_ACCESS_KEY, --s3-profile, or "
        "the standard AWS variables); the platform then serves no S3 API itself",
    )  # fmt: skip
    parser.add_argument("--s3-profile", help="AWS shared-credentials profile holding the external store's keys")
    parser.add_argument(
        "--artifact-root",
        action="append",
        type=Path,
        help="allow local ModelDataUrl paths only under this folder (repeatable; default: anywhere on "
        "loopback binds, <state-dir>/models otherwise)",
    )
    parser.add_argument(
        "--container-command",
        help="command that starts a model server (default: '<python> -m streamhost.cli container'); "
        "--port/--host/--dialect/--model-dir are appended",
    )
    parser.add_argument(
        "--instance-threads", type=int, help="OMP_NUM_THREADS for instances (default: cores / instances)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds old instances get to finish requests"
    )
    parser.add_argument(
        "--health-interval", type=float, default=5.0, help="seconds between health checks of an instance"
    )
    ray = parser.add_argument_group('Ray cluster placement (pip install "streamhost[ray]")')
    ray.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        default=os.environ.get("STREAMHOST_RAY") or None,
        help="place endpoint instances on a Ray cluster: 'auto' (the cluster this machine belongs to) or its "
        "address (host:port); default: local processes (or $STREAMHOST_RAY)",
    )
    ray.add_argument(
        "--ray-instance-type",
        action="append",
        default=[],
        metavar="TYPE=CPU=n,GPU=n",
        help="add or override an InstanceType's resources per instance (repeatable), e.g. ml.my.box=CPU=6,GPU=1",
    )
    ray.add_argument(
        "--ray-cpu-scale", type=float, default=1.0, help="multiply every InstanceType's CPUs (small nodes: 0.25)"
    )
    ray.add_argument("--ray-instance-host", help="address instances bind on their node (default: the node's IP)")
    ray.add_argument("--ray-platform-url", help="URL Ray nodes use to download model data from this platform")
    ray.add_argument(
        "--ray-cache-dir", help="per-node folder for model data and instance logs (default ~/.cache/streamhost/ray)"
    )
    parser.add_argument(
        "--deploy-default", action="store_true", help="create endpoint 'smollm2' with the embedded model"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import PlatformApp
    from .defaults import deploy_default
    from .instance_types import DEFAULT_INSTANCE_TYPES, parse_instance_type_option
    from .settings import PlatformSettings, default_container_command

    if not (len(args.account_id) == 12 and args.account_id.isdigit()):
        print(f"streamhost serve: error: --account-id must be 12 digits, got {args.account_id!r}", file=sys.stderr)
        return 2
    instance_types = dict(DEFAULT_INSTANCE_TYPES)
    try:
        instance_types.update(parse_instance_type_option(text) for text in args.ray_instance_type)
    except ValueError as exc:
        print(f"streamhost serve: error: {exc}", file=sys.stderr)
        return 2
    if args.ray_cpu_scale <= 0:
        print("streamhost serve: error: --ray-cpu-scale must be above 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is noise
    settings = PlatformSettings(
        state_dir=Path(args.state_dir),
        host=args.host,
        port=args.port,
        region=args.region,
        account=args.account_id,
        auth=args.auth,
        credentials_file=args.credentials_file,
        s3_endpoint_url=args.s3_endpoint_url,
        s3_access_key_id=os.environ.get("STREAMHOST_S3_ACCESS_KEY_ID") or None,
        s3_secret_access_key=os.environ.get("STREAMHOST_S3_SECRET_ACCESS_KEY") or None,
        s3_profile=args.s3_profile,
        artifact_roots=args.artifact_root,
        container_command=shlex.split(args.container_command)
        if args.container_command
        else default_container_command(),
        threads_per_instance=args.instance_threads,
        drain_timeout=args.drain_timeout,
        health_interval=args.health_interval,
        ray_address=args.ray,
        ray_instance_types=instance_types,
        ray_cpu_scale=args.ray_cpu_scale,
        ray_instance_host=args.ray_instance_host,
        ray_platform_url=args.ray_platform_url or f"http://{args.host}:{args.port}",
        ray_cache_dir=args.ray_cache_dir,
    )
    app = PlatformApp(settings)
    if args.deploy_default:
        app.started_callbacks.append(deploy_default)
    auth = "SigV4 auth on" if settings.auth else "SigV4 auth off (loopback)"
    objects = f"objects in {settings.s3_endpoint_url}" if settings.s3_endpoint_url else "embedded S3 store"
    logging.getLogger("streamhost.platform").info(
        "streamhost platform on http://%s:%d, state in %s, %s, %s",
        args.host,
        args.port,
        settings.state_dir,
        auth,
        objects,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
    )
    return 0
