"""Instance-type resources, the unplaceable FailureReason, the model-data export route, --ray without Ray."""

from __future__ import annotations

import asyncio
import tarfile

import pytest

from streamhost.platform.artifact_exports import ROUTE_PREFIX, TOKEN_HEADER, ArtifactExports
from streamhost.platform.instance_types import (
    DEFAULT_INSTANCE_TYPES,
    UnknownInstanceType,
    parse_instance_type_option,
    parse_resources,
    resources_for,
)
from streamhost.platform.placement import LocalPlacement, make_placement
from streamhost.platform.settings import PlatformSettings


def test_the_posts_instance_types_map_to_their_resources():
    table = DEFAULT_INSTANCE_TYPES
    assert resources_for("ml.m5.large", table) == {"CPU": 2.0}
    assert resources_for("ml.m5.xlarge", table) == {"CPU": 4.0}
    assert resources_for("ml.g5.xlarge", table) == {"CPU": 4.0, "GPU": 1.0}
    assert resources_for("ml.g5.2xlarge", table) == {"CPU": 8.0, "GPU": 1.0}
    assert resources_for("ml.g5.48xlarge", table)["GPU"] == 8.0
    assert resources_for("ml.c5.xlarge", table) == {"CPU": 4.0}
    assert resources_for(None, table) == {"CPU": 2.0}  # no InstanceType: the smallest general-purpose


def test_cpu_scale_shrinks_cpus_but_never_gpus():
    assert resources_for("ml.g5.2xlarge", DEFAULT_INSTANCE_TYPES, cpu_scale=0.25) == {"CPU": 2.0, "GPU": 1.0}
    assert resources_for("ml.m5.large", DEFAULT_INSTANCE_TYPES, cpu_scale=0.001)["CPU"] > 0


def test_user_types_and_unknown_types():
    name, resources = parse_instance_type_option("ml.box.custom=CPU=6,GPU=1,accel=2")
    assert (name, resources) == ("ml.box.custom", {"CPU": 6.0, "GPU": 1.0, "accel": 2.0})
    assert parse_resources('{"CPU": 1, "GPU": 0.5}') == {"CPU": 1.0, "GPU": 0.5}
    with pytest.raises(ValueError, match="NAME=AMOUNT"):
        parse_resources("CPU")
    with pytest.raises(ValueError, match="non-negative"):
        parse_resources("CPU=-1")
    with pytest.raises(ValueError, match="TYPE=CPU"):
        parse_instance_type_option("=CPU=1")
    with pytest.raises(UnknownInstanceType, match="--ray-instance-type ml.nope.big=CPU"):
        resources_for("ml.nope.big", DEFAULT_INSTANCE_TYPES)


def test_unplaceable_reason_names_the_missing_resource():
    pytest.importorskip("ray")
    from streamhost.platform.placement_ray import unplaceable_reason

    nodes = [{"Resources": {"CPU": 2.0}}, {"Resources": {"CPU": 8.0}}]
    reason = unplaceable_reason("AllTraffic", "ml.g5.xlarge", {"CPU": 4.0, "GPU": 1.0}, nodes)
    assert "GPU: 1 (the most any node has: 0)" in reason and "CPU" not in reason.split("has")[1].split(".")[0]
    assert "ml.g5.xlarge" in reason and "2 alive" in reason
    split = unplaceable_reason(
        "V", "ml.x", {"CPU": 4.0, "GPU": 1.0}, [{"Resources": {"CPU": 8.0}}, {"Resources": {"GPU": 1.0}}]
    )
    assert "together on one node" in split


def test_local_placement_is_the_default(tmp_path):
    settings = PlatformSettings(state_dir=tmp_path)
    assert isinstance(make_placement(settings, None), LocalPlacement)


def test_ray_option_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(SystemExit, match=r'pip install "streamhost\[ray\]"'):
        make_placement(PlatformSettings(state_dir=tmp_path, ray_address="auto"), None)


def _get(exports: ArtifactExports, export_id: str, token: str | None) -> tuple[int, bytes]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    headers = [(TOKEN_HEADER.encode(), token.encode())] if token else []
    scope = {"type": "http", "method": "GET", "path": ROUTE_PREFIX + export_id, "headers": headers}
    asyncio.run(exports.serve(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def test_exports_serve_a_folder_as_a_tar_only_with_the_token(tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\0" * 1000)
    exports = ArtifactExports(tmp_path / "exports")
    export_id = exports.publish(model)
    assert exports.publish(model) == export_id  # same content, same id (nodes keep their cache)

    assert _get(exports, export_id, None)[0] == 403
    assert _get(exports, export_id, "wrong")[0] == 403
    assert _get(exports, "unknown", exports.token)[0] == 404
    status, body = _get(exports, export_id, exports.token)
    assert status == 200
    archive = tmp_path / "got.tar"
    archive.write_bytes(body)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["config.json", "sub/weights.bin"]

    (model / "config.json").write_text('{"changed": true}')
    assert exports.publish(model) != export_id  # changed content: a new export, a new node cache entry


def test_serve_with_an_address_no_ray_cluster_answers_fails_fast_and_says_so(tmp_path):
    pytest.importorskip("ray")
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    out = subprocess.run(
        [sys.executable, "-m", "streamhost.cli", "serve", "--port", "0", "--state-dir", str(tmp_path), "--ray", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert f"--ray 127.0.0.1:{port}: no Ray cluster answers there" in out.stderr


def test_a_training_job_reserves_its_instance_type_times_its_count_on_one_node(tmp_path):
    pytest.importorskip("ray")
    from types import SimpleNamespace

    from streamhost.platform.training_ray import TrainingPlacementError, trainer_resources, unplaceable_reason

    placement = SimpleNamespace(settings=PlatformSettings(state_dir=tmp_path, ray_cpu_scale=0.5))
    assert trainer_resources({"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}, placement) == {"CPU": 2.0}
    two_gpu_boxes = trainer_resources({"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2}, placement)
    assert two_gpu_boxes == {"CPU": 8.0, "GPU": 2.0}
    assert trainer_resources(None, placement) == {"CPU": 1.0}  # no ResourceConfig: ml.m5.large
    with pytest.raises(TrainingPlacementError, match="ml.nope.large"):
        trainer_resources({"InstanceType": "ml.nope.large", "InstanceCount": 1}, placement)

    nodes = [{"Resources": {"CPU": 4.0}}, {"Resources": {"CPU": 2.0, "GPU": 1.0}}]
    reason = unplaceable_reason({"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2}, two_gpu_boxes, nodes)
    assert "2 x ml.g5.2xlarge" in reason and "CPU: 8 (the most any node has: 4)" in reason
    assert "GPU: 2 (the most any node has: 1)" in reason and "2 alive" in reason


@pytest.mark.parametrize("node_policy", [None, "ACTIVE"])
def test_a_ray_model_server_gets_the_openmp_settings_a_local_one_gets(tmp_path, monkeypatch, node_policy):
    """Whatever the Ray node was started with, a Ray-placed model server waits and spins like a local one."""
    from types import SimpleNamespace

    from streamhost.platform.ray_node import _model_server_env
    from streamhost.platform.supervisor import Supervisor

    if node_policy:
        monkeypatch.setenv("OMP_WAIT_POLICY", node_policy)
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    settings = PlatformSettings(state_dir=tmp_path, threads_per_instance=1)
    keys = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "TOKENIZERS_PARALLELISM")
    for model_env in ({}, {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}):
        local = Supervisor.instance_env(SimpleNamespace(settings=settings), dict(model_env), 2)  # type: ignore[arg-type]
        on_ray = _model_server_env(dict(model_env), threads=1)
        assert {k: on_ray.get(k) for k in keys} == {k: local.get(k) for k in keys}
    assert on_ray["OMP_WAIT_POLICY"] == "ACTIVE" and on_ray["OMP_NUM_THREADS"] == "3"
    assert _model_server_env({}, threads=1)["OMP_WAIT_POLICY"] == "PASSIVE"
