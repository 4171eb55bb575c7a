"""Which executor a model gets without being told, and that an explicit choice always wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamhost.engine import cpu_features
from streamhost.engine.config import EngineConfig
from streamhost.engine.executors import choose_executor
from streamhost.engine.executors.llamacpp_kv import default_cache_type


def test_the_default_model_and_gguf_files_run_on_llamacpp(tiny_llama_gguf: Path) -> None:
    config = EngineConfig(device="cpu")
    for name in ("smollm2", "default", "HuggingFaceTB/SmolLM2-135M-Instruct", str(tiny_llama_gguf)):
        assert choose_executor(name, config) == "llamacpp", name
    assert choose_executor(str(tiny_llama_gguf.parent), config) == "llamacpp"  # a folder of one GGUF


def test_safetensors_folders_run_on_torch_and_quantizing_them_on_llamacpp(tiny_llama_dir: Path) -> None:
    assert choose_executor(str(tiny_llama_dir), EngineConfig(device="cpu")) == "torch"
    assert choose_executor(str(tiny_llama_dir), EngineConfig(device="cpu", quantize="q8_0")) == "llamacpp"


@pytest.mark.parametrize("asked", ["torch", "TORCH", "llama.cpp"])
def test_an_explicit_choice_wins(asked: str, tiny_llama_dir: Path) -> None:
    expected = "torch" if asked.lower() == "torch" else "llamacpp"
    assert choose_executor("smollm2", EngineConfig(device="cpu", executor=asked)) == expected
    assert choose_executor(str(tiny_llama_dir), EngineConfig(device="cpu", executor=asked)) == expected


def test_a_gpu_gets_torch_even_for_the_default_model() -> None:
    assert choose_executor("smollm2", EngineConfig(device="cuda")) == "torch"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx2 avx512f avx512_bf16 amx_tile", "bf16"),
        ("fpu sse avx2 avx512f amx_bf16 amx_tile", "bf16"),
        ("fpu sse avx2 avx512f", "f16"),
    ],
)
def test_kv_cells_default_to_bf16_only_with_hardware_bf16(
    flags: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    monkeypatch.setattr(cpu_features, "CPUINFO", cpuinfo)
    cpu_features.cpu_flags.cache_clear()
    try:
        assert default_cache_type() == expected
    finally:
        cpu_features.cpu_flags.cache_clear()
