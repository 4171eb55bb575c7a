"""Model servers as real processes on real sockets, for the end-to-end tests.

``start_container`` runs ``python -m streamhost.cli container`` on a free port, waits for
``/ping`` 200 and returns a handle; the fixtures keep few processes alive (each loads a model and
the machine has two cores): one TGI-dialect server on the tiny model for the whole session and one
LMI-dialect server per module that asks for it. ``OMP_WAIT_POLICY=PASSIVE`` stops OpenMP threads
of several processes from spinning against each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamhost.launcher import ServerProcess, free_port, streamhost_command

# The TGI test server's limits: small enough that a request without max_new_tokens ends quickly.
TINY_ENV = {
    "MAX_TOTAL_TOKENS": "512",
    "MAX_INPUT_TOKENS": "400",
    "MAX_CONCURRENT_REQUESTS": "2",
    "PAYLOAD_LIMIT": "200000",
}


# A running ``streamhost container`` process (proc, url, log_path, env, log(), stop()).
Container = ServerProcess


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPTION_", "MAX_", "HF_MODEL"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_WAIT_POLICY": "PASSIVE",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def start_container(args: list[str], log_path: Path, env: dict[str, str] | None = None, wait: bool = True,
                    timeout: float = 180) -> Container:  # fmt: skip
    port = free_port()
    container = ServerProcess(
        streamhost_command("container", "--port", str(port), *args), port, log_path, server_env(env)
    )
    container.spawn()
    if wait:
        container.wait_ready(timeout)
    return container


def wait_ready(container: Container, timeout: float = 180) -> None:
    container.wait_ready(timeout)


@pytest.fixture(scope="session", params=["torch", "llamacpp"])
def tgi_server(request: pytest.FixtureRequest, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model behind the TGI dialect, once per executor: the safetensors folder runs on
    torch, its GGUF conversion on llama.cpp (chosen automatically for a .gguf, no flag)."""
    log = tmp_path_factory.mktemp(f"tgi-server-{request.param}") / "server.log"
    if request.param == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")
        model = request.getfixturevalue("tiny_llama_gguf")
        env = {**TINY_ENV, **request.getfixturevalue("tiny_llama_gguf_env")}
    else:
        model, env = tiny_llama_dir, TINY_ENV
    container = start_container(["--model-id", str(model)], log, env)
    yield container
    container.stop()


@pytest.fixture(scope="session")
def tgi_url(tgi_server: Container) -> str:
    return tgi_server.url


def write_lmi_dir(folder: Path, model_dir: Path, properties: dict[str, str]) -> Path:
    """An LMI model folder: serving.properties naming the weights (``option.model_id``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["engine=Python", f"option.model_id={model_dir}"] + [f"{k}={v}" for k, v in properties.items()]
    (folder / "serving.properties").write_text("\n".join(lines) + "\n")
    return folder


LMI_PROPERTIES = {
    "option.rolling_batch": "auto",
    "option.output_formatter": "jsonlines",
    "option.max_rolling_batch_size": "4",
    "option.n_positions": "300",
    "option.dtype": "fp32",
}


@pytest.fixture(scope="session")
def lmi_server(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model behind the LMI dialect, configured by a serving.properties file in --model-dir."""
    folder = write_lmi_dir(tmp_path_factory.mktemp("lmi-model"), tiny_llama_dir, LMI_PROPERTIES)
    container = start_container(["--model-dir", str(folder)], folder.parent / "server.log")
    yield container
    container.stop()


@pytest.fixture(scope="session")
def lmi_url(lmi_server: Container) -> str:
    return lmi_server.url


class ContainerFactory:
    """Starts extra servers for one test and stops them after it (``start``, ``lmi_dir``)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Container] = []

    def start(self, args: list[str], env: dict[str, str] | None = None, wait: bool = True) -> Container:
        log = self.tmp_path / f"server-{len(self.started)}.log"
        container = start_container(args, log, env, wait=wait)
        self.started.append(container)
        return container

    def lmi_dir(self, model_dir: Path, properties: dict[str, str]) -> Path:
        return write_lmi_dir(self.tmp_path / f"lmi-{len(self.started)}", model_dir, properties)


@pytest.fixture
def containers(tmp_path: Path):
    factory = ContainerFactory(tmp_path)
    yield factory
    for container in factory.started:
        container.stop()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real Ray cluster for every ``cluster`` test: a head and two workers, each its own ``ray start``
    with 1 CPU (``streamhost.testing_ray``). Modules that need another node add it and kill it after."""
    pytest.importorskip("ray")
    from streamhost.testing_ray import RayCluster

    cluster = RayCluster(tmp_path_factory.mktemp("ray-logs"))
    try:
        yield cluster.start(head_cpus=1, workers=[1, 1])
    finally:
        cluster.stop()
