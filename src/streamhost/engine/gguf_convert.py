"""Hugging Face safetensors folder -> GGUF file, for the llama.cpp executor.

Why our own small converter rather than llama.cpp's ``convert_hf_to_gguf.py``: that script is not
part of any installable package (the llama-cpp-python wheel does not ship it), while ``gguf`` (the
same project's gguf-py) is. So the *knowledge* comes from gguf-py: its tensor name maps
(``gguf.get_tensor_name_map``), its vocab readers (``gguf.vocab.BpeVocab`` / ``LlamaHfVocab`` /
``SentencePieceVocab``) and ``gguf.SpecialVocab`` (merges, special ids, chat template). What is
left here is what those helpers leave to the caller: which architectures we accept, the
hyper-parameters, the q/k row order llama.cpp's Llama RoPE expects, and streaming the tensors out
one at a time so a 7B model never sits in memory twice.

Only the Llama family is accepted (Llama, Mistral, SmolLM, Qwen2): the architectures whose
tensors map one-to-one. Anything else fails at once with :class:`UnsupportedModelError`, which
names the architecture and what to do instead.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# HF architecture -> gguf-py's MODEL_ARCH name; and whether llama.cpp's rope for that arch needs
# the q/k rows interleaved (Llama's "normal" rope) or takes HF's half-split order (NEOX, Qwen2).
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("LLAMA", True),
    "MistralForCausalLM": ("LLAMA", True),
    "Qwen2ForCausalLM": ("QWEN2", False),
}

# tokenizer.ggml.pre identifies the BPE pre-tokenizer; llama.cpp's converter detects it by hashing
# the token ids of a fixed text (ref: https://github.com/ggml-org/llama.cpp/pull/6920). We only
# tokenize with the Hugging Face tokenizer, so an unknown one falls back to "default".
# Bump whenever the converter writes different bytes for the same weights (a fixed tensor layout, a
# new metadata key): it is part of the GGUF cache key, so files made by an older converter are
# made again instead of being reused.
CONVERTER_REVISION = 1

_PRE_TOKENIZER_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
}


class UnsupportedModelError(ValueError):
    """The model cannot be converted to GGUF here; the message says what to use instead."""


@dataclass(frozen=True)
class _TensorPlan:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    file: Path
    permute_heads: int | None  # q/k: heads to interleave for llama.cpp's rope


def _progress(message: str) -> None:
    print(f"[streamhost] {message}", file=sys.stderr, flush=True)


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(f"{folder} has no config.json: not a Hugging Face model folder")
    return json.loads(path.read_text(encoding="utf-8"))


def architecture_of(config: dict) -> str:
    """The HF architecture, or UnsupportedModelError naming it and the alternatives."""
    names = config.get("architectures") or []
    arch = names[0] if names else str(config.get("model_type", "unknown"))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"cannot convert architecture {arch!r} to GGUF (supported: {', '.join(SUPPORTED_ARCHITECTURES)}); "
            "serve it unquantized with the torch executor (unset HF_MODEL_QUANTIZE / OPTION_QUANTIZE, "
            "--executor torch) or give a .gguf file made by llama.cpp's convert_hf_to_gguf.py"
        )
    rope = config.get("rope_scaling") or {}
    kind = (rope.get("rope_type") or rope.get("type") or "").lower()
    if kind not in ("", "default", "linear", "llama3"):
        raise UnsupportedModelError(
            f"cannot convert {arch} with rope_scaling type {kind!r} to GGUF; serve it with the torch executor "
            "or give a .gguf file"
        )
    return arch


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's q/k rows hold each head's rotary pairs as two halves; llama.cpp's Llama rope reads
    them interleaved. Reorder rows per head: [h, 2, d/2, ...] -> [h, d/2, 2, ...]."""
    shape = weights.shape
    return weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _llama3_rope_factors(config: dict) -> np.ndarray:
    """Per-frequency scaling of Llama 3.1+'s rope, which llama.cpp reads from a ``rope_freqs`` tensor."""
    rope = config["rope_scaling"]
    dim = _head_dim(config)
    base = _rope_theta(config)
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_len = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"{folder} has no .safetensors weights (only safetensors models can be converted)")
    return files


def weights_fingerprint(folder: Path) -> str:
    """A content hash of the weights (the cache key). Hub snapshots name each file's blob by its
    sha256 already, so those are read from the link, not re-hashed; others are hashed once."""
    digest = sha256()
    for path in _weight_files(folder):
        target = path.resolve()
        if path.is_symlink() and len(target.name) == 64 and all(c in "0123456789abcdef" for c in target.name):
            digest.update(f"{path.name}:{target.name}".encode())
            continue
        digest.update(path.name.encode())
        _hash_file(digest, path)
    return digest.hexdigest()[:16]


def file_fingerprint(path: Path) -> str:
    """A content hash of one file (a GGUF's cache key): a copy elsewhere still hits, a changed file does not."""
    digest = sha256()
    _hash_file(digest, Path(path))
    return digest.hexdigest()[:16]


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(16 * 1024 * 1024), b""):
            digest.update(chunk)


def _plan_tensors(folder: Path, config: dict, arch: str) -> list[_TensorPlan]:
    import gguf
    from safetensors import safe_open

    arch_name, interleave = SUPPORTED_ARCHITECTURES[arch]
    n_layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch_name), n_layers)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    tied = bool(config.get("tie_word_embeddings", False))
    plans: list[_TensorPlan] = []
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                    continue  # recomputed by llama.cpp / the same tensor as token_embd
                mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if mapped is None:
                    raise UnsupportedModelError(f"cannot map tensor {name!r} of {arch} to GGUF")
                permute = None
                if interleave and name.endswith("q_proj.weight"):
                    permute = heads
                elif interleave and name.endswith("k_proj.weight"):
                    permute = kv_heads
                shape = tuple(f.get_slice(name).get_shape())
                plans.append(_TensorPlan(name, mapped, shape, file, permute))
    return plans


def _write_vocab(writer, folder: Path, vocab_size: int) -> None:
    """Token list, types, merges and special ids from gguf-py's vocab helpers."""
    import gguf
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab

    vocab = None
    for kind in (BpeVocab, LlamaHfVocab, SentencePieceVocab):
        try:
            vocab = kind(folder)
            break
        except (FileNotFoundError, TypeError, ValueError, KeyError):
            continue
    if vocab is None:
        raise UnsupportedModelError(f"{folder}: no tokenizer.json / vocab.json / tokenizer.model that GGUF can hold")
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for text, score, token_type in vocab.all_tokens():
        tokens.append(text if isinstance(text, bytes) else str(text).encode("utf-8"))
        scores.append(score)
        types.append(int(token_type))
    special = _special_token_ids(folder)
    for i in special:
        if i < len(types):
            types[i] = int(gguf.TokenType.CONTROL)
    while len(tokens) < vocab_size:  # the embedding matrix may be padded past the tokenizer
        tokens.append(f"[PAD{len(tokens)}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    writer.add_tokenizer_model(vocab.tokenizer_model)
    if vocab.tokenizer_model == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer(folder))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens)).add_to_gguf(writer)


def _special_token_ids(folder: Path) -> set[int]:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return set()
    data = json.loads(path.read_text(encoding="utf-8"))
    return {int(t["id"]) for t in data.get("added_tokens") or [] if t.get("special")}


def _pre_tokenizer(folder: Path) -> str:
    try:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(folder).encode(_PRE_TOKENIZER_TEXT)
    except Exception:
        return "default"
    return _PRE_TOKENIZERS.get(sha256(str(ids).encode()).hexdigest(), "default")


def convert_to_gguf(folder: Path, out: Path, *, progress: Callable[[str], None] = _progress) -> Path:
    """Write ``folder``'s model as a GGUF at ``out``: matrices in BF16 (the quantizer's input), norms
    and biases in F32. Tensors are read, converted and written one at a time."""
    import gguf
    import torch
    from safetensors import safe_open

    folder, out = Path(folder), Path(out)
    config = read_config(folder)
    arch = architecture_of(config)
    arch_name, _ = SUPPORTED_ARCHITECTURES[arch]
    plans = _plan_tensors(folder, config, arch)
    rope = config.get("rope_scaling") or {}
    rope_kind = (rope.get("rope_type") or rope.get("type") or "").lower()

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch_name)])
    writer.add_name(folder.name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_BF16))
    if rope_kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    vocab_size = int(config.get("vocab_size") or 0)
    writer.add_vocab_size(vocab_size)
    _write_vocab(writer, folder, vocab_size)

    extra: list[tuple[str, np.ndarray]] = []
    if rope_kind == "llama3":
        extra.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS], _llama3_rope_factors(config)))

    def kind_of(plan: _TensorPlan) -> tuple[np.dtype, gguf.GGMLQuantizationType]:
        if len(plan.shape) >= 2:
            return np.dtype(np.uint16), gguf.GGMLQuantizationType.BF16
        return np.dtype(np.float32), gguf.GGMLQuantizationType.F32

    for name, array in extra:
        writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
    for plan in plans:
        dtype, raw = kind_of(plan)
        writer.add_tensor_info(plan.gguf_name, plan.shape, dtype, int(np.prod(plan.shape)) * dtype.itemsize, raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, array in extra:
        writer.write_tensor_data(array)

    started = time.monotonic()
    step = max(1, len(plans) // 10)
    handles: dict[Path, object] = {}
    try:
        for index, plan in enumerate(plans):
            handle = handles.get(plan.file)
            if handle is None:
                handle = handles[plan.file] = safe_open(str(plan.file), framework="pt")
            tensor = handle.get_tensor(plan.hf_name)  # type: ignore[attr-defined]
            if plan.permute_heads is not None:
                tensor = torch.from_numpy(_permute(tensor.float().numpy(), plan.permute_heads))
            if len(plan.shape) >= 2:
                array = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
            else:
                array = tensor.float().contiguous().numpy()
            writer.write_tensor_data(array)
            if (index + 1) % step == 0 or index + 1 == len(plans):
                progress(f"GGUF conversion: {index + 1}/{len(plans)} tensors ({time.monotonic() - started:.1f} s)")
    finally:
        writer.close()
    return out
