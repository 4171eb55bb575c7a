"""Platform defaults that matter for safety: auth and artifact confinement follow the bind address."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamhost.platform.artifacts import ArtifactError, ArtifactStore, ModelData
from streamhost.platform.main import run
from streamhost.platform.settings import PlatformSettings, is_loopback


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                            ("0.0.0.0", False), ("10.1.2.3", False), ("", False)])  # fmt: skip
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_auth_and_confinement_default_on_for_network_binds(tmp_path):
    local = PlatformSettings(state_dir=tmp_path, host="127.0.0.1")
    assert (local.auth, local.artifact_roots) == (False, None)
    public = PlatformSettings(state_dir=tmp_path, host="0.0.0.0")
    assert public.auth is True
    assert public.artifact_roots == [tmp_path / "models"]
    explicit = PlatformSettings(state_dir=tmp_path, host="0.0.0.0", auth=False)
    assert explicit.auth is False


def test_download_timeout_is_enforced(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    monkeypatch.setattr(store, "fetch", lambda data, deadline=None: time.sleep(2))

    async def attempt() -> float:
        started = time.monotonic()
        with pytest.raises(ArtifactError, match="ModelDataDownloadTimeoutInSeconds"):
            await store.fetch_async(ModelData("s3://b/k.tar.gz"), timeout=0.3)
        return time.monotonic() - started

    assert asyncio.run(attempt()) < 1.5  # the endpoint fails at the timeout, not when the download ends


def test_bad_account_id_is_refused(capsys):
    import argparse

    from streamhost.platform.main import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--account-id", "12ab"])) == 2
    assert "12 digits" in capsys.readouterr().err
