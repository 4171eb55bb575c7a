"""``streamhost sdk-env``: the environment a SageMaker Python SDK 2.x notebook needs to run against streamhost.

A notebook written for SageMaker runs unchanged (except for a literal role ARN) once these are set:

- ``AWS_ENDPOINT_URL``: the platform answers SageMaker, SageMaker Runtime, S3, STS and IAM on one URL;
- ``AWS_DEFAULT_REGION``/``AWS_REGION``: a real region name (the SDK's image-URI tables know only those);
- credentials: the ones boto3 would use anyway, else placeholders (a loopback platform checks no signature);
- ``SAGEMAKER_USER_CONFIG_OVERRIDE``: an SDK config file naming the default bucket and turning telemetry off;
- ``AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE``/``..._SPECS_...``: JumpStart metadata generated from our
  catalog (``JumpStartModel(model_id)`` reads it; the platform serves the same files from its JumpStart bucket).

The files are written under ``<state-dir>/sdk`` (or ``--config-dir``); ``--shell`` prints ``export`` lines
for ``eval "$(streamhost sdk-env --shell)"``, ``--json`` prints everything for programs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamhost.cli.common import add_url_option, print_json, run
from streamhost.client.sdk import default_state_dir, platform_url

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"
PLACEHOLDER_KEY = "streamhost"
CONFIG_FILE = "sagemaker-config.yaml"
JUMPSTART_DIR = "jumpstart"


@dataclass
class SdkEnvironment:
    """What ``sdk-env`` produced: variables to export and the files they point at."""

    env: dict[str, str]
    config_file: Path
    jumpstart_dir: Path
    notes: list[str] = field(default_factory=list)
    account: str = DEFAULT_ACCOUNT
    bucket: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "account": self.account,
            "default_bucket": self.bucket,
            "config_file": str(self.config_file),
            "jumpstart_dir": str(self.jumpstart_dir),
            "notes": self.notes,
        }

    def shell(self) -> str:
        return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in self.env.items())


def default_bucket_name(region: str, account: str) -> str:
    """The bucket the SDK itself would pick (``sagemaker-<region>-<account>``)."""
    return f"sagemaker-{region}-{account}"


def sdk_config(bucket: str) -> dict[str, Any]:
    """The SDK config document (``SAGEMAKER_USER_CONFIG_OVERRIDE``); JSON is valid YAML for its loader."""
    return {
        "SchemaVersion": "1.0",
        "SageMaker": {"PythonSDK": {"Modules": {"Session": {"DefaultS3Bucket": bucket}, "TelemetryOptOut": True}}},
    }


def _credentials() -> tuple[str, str, str | None, bool]:
    """(key, secret, token, found): boto3's own credential chain, else placeholders."""
    import botocore.session

    found = botocore.session.get_session().get_credentials()
    if found is None:
        return PLACEHOLDER_KEY, PLACEHOLDER_KEY, None, False
    frozen = found.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token, True


def platform_account(url: str, region: str, key: str, secret: str) -> str | None:
    """The account id the platform answers STS GetCallerIdentity with, or None when it cannot be asked."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    sts = boto3.client("sts", endpoint_url=url, region_name=region, aws_access_key_id=key, aws_secret_access_key=secret,
                       config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))  # fmt: skip
    try:
        return str(sts.get_caller_identity()["Account"])
    except (BotoCoreError, ClientError, KeyError):
        return None


def build_sdk_environment(
    url: str,
    config_dir: Path,
    *,
    region: str = DEFAULT_REGION,
    account: str | None = None,
    bucket: str | None = None,
    state_dir: Path | None = None,
    credentials: tuple[str, str] | None = None,
) -> SdkEnvironment:
    """Write the SDK config file and the JumpStart metadata under ``config_dir``; return the variables."""
    from streamhost.catalog.specs import load_catalog
    from streamhost.platform.jumpstart import write_local_metadata

    notes: list[str] = []
    token = None
    if credentials is not None:
        key, secret = credentials
    else:
        key, secret, token, found = _credentials()
        if not found:
            notes.append(
                "no AWS credentials configured: using placeholder keys, which a platform bound to 127.0.0.1 "
                "accepts; a platform with SigV4 auth on needs the keys it was started with"
            )
    if account is None:
        account = platform_account(url, region, key, secret)
        if account is None:
            account = DEFAULT_ACCOUNT
            notes.append(f"could not ask the platform at {url} for its account id (is it running?): assumed {account}")

    config_dir.mkdir(parents=True, exist_ok=True)
    bucket = bucket or default_bucket_name(region, account)
    config_file = config_dir / CONFIG_FILE
    tmp = config_file.with_name(config_file.name + ".tmp")
    tmp.write_text(json.dumps(sdk_config(bucket), indent=2) + "\n", encoding="utf-8")
    tmp.replace(config_file)
    jumpstart_dir = write_local_metadata(
        config_dir / JUMPSTART_DIR, load_catalog(state_dir), region=region, account=account
    )

    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    if token:
        env["AWS_SESSION_TOKEN"] = token
    env.update({
        "AWS_EC2_METADATA_DISABLED": "true",  # no 1-s IMDS probes from a laptop
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config_file),
        "AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE": str(jumpstart_dir),
        "AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE": str(jumpstart_dir),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    })  # fmt: skip
    notes.append("get_execution_role() calls STS at a fixed AWS address: pass the role ARN literally")
    return SdkEnvironment(env, config_file, jumpstart_dir, notes, account=account, bucket=bucket)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sdk-env",
        help="environment and config files for SageMaker Python SDK notebooks",
        description="Write the SageMaker SDK config file and JumpStart metadata a notebook needs, and print the "
        'environment variables that point the SDK at this platform. Use: eval "$(streamhost sdk-env --shell)".',
    )
    add_url_option(p)
    p.add_argument(
        "--state-dir", type=Path, help="platform state directory (its catalog extension; default ~/.streamhost)"
    )
    p.add_argument("--config-dir", type=Path, help="where to write the files (default <state-dir>/sdk)")
    p.add_argument("--region", default=DEFAULT_REGION, help="region the platform was started with (default us-east-1)")
    p.add_argument("--account-id", help="account id the platform was started with (default: ask the platform's STS)")
    p.add_argument("--bucket", help="default S3 bucket (default sagemaker-<region>-<account>)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--shell", action="store_true", help="print only `export` lines (for eval)")
    form.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(_handler=lambda args: run(print_sdk_env, args))


def print_sdk_env(args: argparse.Namespace) -> int:
    state_dir = (args.state_dir or default_state_dir()).expanduser()
    config_dir = (args.config_dir or state_dir / "sdk").expanduser()
    result = build_sdk_environment(
        platform_url(getattr(args, "url", None)),
        config_dir,
        region=args.region,
        account=args.account_id,
        bucket=args.bucket,
        state_dir=state_dir,
    )
    if args.json:
        print_json(result.to_json())
        return 0
    sys.stdout.write(result.shell())
    if not args.shell:
        for note in result.notes:
            sys.stderr.write(f"# note: {note}\n")
        sys.stderr.write('# load into a shell: eval "$(streamhost sdk-env --shell)"; in a notebook: %env per line\n')
    return 0
