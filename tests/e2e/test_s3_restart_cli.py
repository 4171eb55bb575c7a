"""The embedded store with the AWS CLI (``aws s3 cp/ls``) and across a platform killed with SIGKILL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _platform_fixtures import ACCESS_KEY, REGION, SECRET_KEY, PlatformProcess
from boto3.s3.transfer import TransferConfig

AWS = Path(sys.executable).with_name("aws")
MiB = 1024 * 1024


def aws(platform: PlatformProcess, *args: str) -> str:
    """Run the AWS CLI with only the environment a user would set: one endpoint URL for everything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ENDPOINT_URL": platform.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})  # fmt: skip
    done = subprocess.run([str(AWS), *args], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"aws {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.skipif(not AWS.exists(), reason="the AWS CLI (pip install awscli) is not installed")
def test_aws_cli_and_restart_keep_every_object(tmp_path):
    platform = PlatformProcess(tmp_path / "state").start()
    try:
        s3 = platform.client("s3")
        aws(platform, "s3", "mb", "s3://cli-bucket")
        small = tmp_path / "small.txt"
        small.write_text("hello from the cli\n")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(9 * MiB))
        aws(platform, "s3", "cp", str(small), "s3://cli-bucket/docs/small.txt")
        aws(platform, "s3", "cp", str(big), "s3://cli-bucket/data/big.bin")  # multipart (8 MiB threshold)
        s3.upload_file(str(big), "cli-bucket", "data/big-boto.bin",
                       Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))  # fmt: skip
        for i in range(5):
            s3.put_object(Bucket="cli-bucket", Key=f"many/{i}.txt", Body=str(i).encode())
        expected = sorted(["docs/small.txt", "data/big.bin", "data/big-boto.bin"] + [f"many/{i}.txt" for i in range(5)])
        listed = aws(platform, "s3", "ls", "--recursive", "s3://cli-bucket/")
        assert sorted(line.split()[-1] for line in listed.splitlines()) == expected
        assert "PRE data/" in aws(platform, "s3", "ls", "s3://cli-bucket/")
        etags = {k: s3.head_object(Bucket="cli-bucket", Key=k)["ETag"] for k in expected}

        platform.kill()  # SIGKILL: no shutdown code runs
        platform.start()

        assert "cli-bucket" in aws(platform, "s3", "ls")
        listed = aws(platform, "s3", "ls", "--recursive", "s3://cli-bucket/")
        assert sorted(line.split()[-1] for line in listed.splitlines()) == expected
        s3 = platform.client("s3")
        assert {k: s3.head_object(Bucket="cli-bucket", Key=k)["ETag"] for k in expected} == etags
        back = tmp_path / "back.bin"
        aws(platform, "s3", "cp", "s3://cli-bucket/data/big.bin", str(back))
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()
        assert s3.get_object(Bucket="cli-bucket", Key="docs/small.txt")["Body"].read() == small.read_bytes()
        aws(platform, "s3", "rm", "--recursive", "s3://cli-bucket/many/")
        assert len(aws(platform, "s3", "ls", "--recursive", "s3://cli-bucket/").splitlines()) == 3
        tree = tmp_path / "tree"
        for name in ("a.txt", "sub/b.txt", "sub/deeper/c with space.txt"):
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_text(name)
        assert aws(platform, "s3", "sync", str(tree), "s3://cli-bucket/synced/").count("upload:") == 3
        assert aws(platform, "s3", "sync", str(tree), "s3://cli-bucket/synced/").count("upload:") == 0  # up to date
        back_tree = tmp_path / "back-tree"
        aws(platform, "s3", "sync", "s3://cli-bucket/synced/", str(back_tree))
        assert sorted(p.relative_to(back_tree).as_posix() for p in back_tree.rglob("*") if p.is_file()) == [
            "a.txt", "sub/b.txt", "sub/deeper/c with space.txt"]  # fmt: skip
        assert (back_tree / "sub/deeper/c with space.txt").read_text() == "sub/deeper/c with space.txt"
    finally:
        platform.stop()
