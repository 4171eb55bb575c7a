"""Shared fixtures: the real SmolLM2 tokenizer and a tiny random Llama built from a config.

The tiny model uses SmolLM2's real tokenizer (multi-byte tokens, chat template) so the engine,
detokenizer and protocol tests exercise real text, while a forward pass costs milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a hub: the machine has no network beyond package registries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Model servers started by tests run eagerly (compiling costs minutes); test_compiled_step.py
# covers the compiled path.
os.environ.setdefault("STREAMHOST_COMPILE", "0")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real default model as a bf16 folder (converted once into the shared cache)."""
    from streamhost.engine.loader import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a normal HF folder."""
    from streamhost.testing import build_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-llama")
    return build_tiny_llama(folder, smollm2_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """The tiny random Llama converted to a BF16 GGUF by our own converter (no download)."""
    from streamhost.engine.executors import gguf_tokenizer
    from streamhost.engine.gguf_convert import convert_to_gguf

    folder = tmp_path_factory.mktemp("tiny-gguf")
    path = convert_to_gguf(tiny_llama_dir, folder / "model" / "tiny-llama-bf16.gguf")
    # Its tokenizer is extracted (slow, then cached) here rather than inside a server's start-up
    # timeout, into a cache of its own (servers of this GGUF get ``tiny_llama_gguf_env``).
    previous = os.environ.get("STREAMHOST_CACHE")
    os.environ["STREAMHOST_CACHE"] = str(tiny_gguf_cache(path))
    try:
        gguf_tokenizer(path)
    finally:
        if previous is None:
            os.environ.pop("STREAMHOST_CACHE")
        else:
            os.environ["STREAMHOST_CACHE"] = previous
    return path


def tiny_gguf_cache(gguf_path: Path) -> Path:
    return gguf_path.parent.parent / "cache"


@pytest.fixture(scope="session")
def tiny_llama_gguf_env(tiny_llama_gguf: Path) -> dict[str, str]:
    """Environment for a server of the tiny GGUF: the STREAMHOST_CACHE holding its tokenizer."""
    return {"STREAMHOST_CACHE": str(tiny_gguf_cache(tiny_llama_gguf))}


@pytest.fixture(scope="session")
def make_tiny_executor(tiny_llama_dir: Path, tiny_llama_gguf: Path):
    """``make_tiny_executor(kind)``: the tiny model on the executor named ``torch`` or ``llamacpp``."""
    return lambda kind: _tiny_executor(kind, tiny_llama_dir, tiny_llama_gguf)


def _tiny_executor(kind: str, tiny_llama_dir: Path, tiny_llama_gguf: Path):
    if kind == "torch":
        from streamhost.engine.executor import TorchExecutor

        return TorchExecutor(tiny_llama_dir, dtype="bf16", device="cpu")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")
    from transformers import AutoTokenizer

    from streamhost.engine.executors.llamacpp import LlamaCppExecutor

    return LlamaCppExecutor(tiny_llama_gguf, AutoTokenizer.from_pretrained(tiny_llama_dir), threads=2)
