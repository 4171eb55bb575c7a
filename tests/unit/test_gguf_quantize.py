"""HF safetensors -> GGUF -> llama.cpp quantization, cached; clear refusals for what we cannot do."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from streamhost.engine import gguf_quantize
from streamhost.engine.gguf_convert import UnsupportedModelError, convert_to_gguf
from streamhost.engine.gguf_quantize import (
    UnsupportedQuantizationError,
    gguf_for,
    normalize_quant_type,
    requantized_gguf,
)

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make install`")


def gguf_fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {
        "file_type": int(reader.fields["general.file_type"].contents()),
        "tensors": {t.name: t.tensor_type.name for t in reader.tensors},
    }


def test_converter_writes_every_tensor_with_llama_names(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    out = convert_to_gguf(tiny_llama_dir, tmp_path / "m.gguf")
    fields = gguf_fields(out)
    with safe_open(str(tiny_llama_dir / "model.safetensors"), framework="pt") as f:
        # lm_head is tied: llama.cpp reuses token_embd
        hf_names = [n for n in f.keys() if n != "lm_head.weight"]
    assert len(fields["tensors"]) == len(hf_names)
    assert fields["tensors"]["token_embd.weight"] == "BF16" and fields["tensors"]["blk.1.attn_q.weight"] == "BF16"
    assert fields["tensors"]["output_norm.weight"] == "F32"


def test_quantized_gguf_is_cached_by_weights_type_and_versions(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMHOST_CACHE", str(tmp_path / "cache"))
    first = gguf_for(tiny_llama_dir, "Q8_0", threads=2)
    assert first.parent == tmp_path / "cache" / "gguf"
    assert "-q8_0-llamacpp" + llama_cpp.__version__ in first.name
    assert gguf_fields(first)["file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert gguf_fields(first)["tensors"]["blk.0.ffn_up.weight"] == "Q8_0"
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    assert gguf_for(tiny_llama_dir, "q8_0") == first and first.stat().st_mtime_ns == stamp  # reused, not redone
    other = gguf_for(tiny_llama_dir, "q4_0", threads=2)
    assert other != first and gguf_fields(other)["file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    # Changed weights are a different cache entry.
    changed = tmp_path / "changed"
    shutil.copytree(tiny_llama_dir, changed)
    weights = changed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert gguf_for(changed, "q8_0", threads=2) != first
    # A newer converter makes the file again rather than reusing one an older converter wrote.
    monkeypatch.setattr(gguf_quantize, "CONVERTER_REVISION", gguf_quantize.CONVERTER_REVISION + 1)
    remade = gguf_for(tiny_llama_dir, "q8_0", threads=2)
    assert remade != first and remade.is_file() and first.is_file()


def test_a_gguf_model_is_requantized_once_and_kept(
    tiny_llama_gguf: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HF_MODEL_QUANTIZE on a GGUF model: llama.cpp's quantizer makes the type once, keyed by the
    file's contents; the file's own type is the file itself; a quantized file says what is lost."""
    cache = tmp_path / "cache"
    q8 = requantized_gguf(tiny_llama_gguf, "Q8_0", threads=2, cache=cache)
    assert q8.parent == cache / "gguf" and "-q8_0-llamacpp" + llama_cpp.__version__ in q8.name
    fields = gguf_fields(q8)
    assert (
        fields["file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0 and fields["tensors"]["blk.1.attn_q.weight"] == "Q8_0"
    )
    stamp = q8.stat().st_mtime_ns
    time.sleep(0.01)
    copy = tmp_path / "elsewhere" / tiny_llama_gguf.name
    copy.parent.mkdir()
    shutil.copy(tiny_llama_gguf, copy)
    assert requantized_gguf(copy, "q8_0", cache=cache) == q8 and q8.stat().st_mtime_ns == stamp  # same bytes: reused
    assert requantized_gguf(q8, "q8_0", cache=cache) == q8  # already that type
    assert "does not come back" not in caplog.text  # BF16 in: nothing was lost before
    with caplog.at_level(logging.WARNING, logger="streamhost.engine.gguf_quantize"):
        q4 = requantized_gguf(q8, "q4_0", threads=2, cache=cache)
    assert gguf_fields(q4)["file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    assert "already quantized" in caplog.text and "does not come back" in caplog.text


@pytest.mark.parametrize("value", ["bitsandbytes", "awq", "gptq", "fp8", "q9_9"])
def test_unsupported_quantization_names_it_and_the_choices(value: str) -> None:
    with pytest.raises(UnsupportedQuantizationError) as err:
        normalize_quant_type(value)
    assert repr(value) in str(err.value) and "q8_0" in str(err.value) and "q4_k_m" in str(err.value)


def test_unsupported_architecture_is_refused_by_name(tiny_llama_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "gpt2ish"
    shutil.copytree(tiny_llama_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*torch executor"):
        gguf_for(other, "q8_0")
