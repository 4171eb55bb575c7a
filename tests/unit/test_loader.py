"""Every way of naming a model ends in a local folder the executor can load, or a clear error."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from streamhost.archive import UnsafeArchiveError, unpack_model_archive
from streamhost.engine.loader import ModelNotFoundError, ensure_default_model, resolve_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMHOST_CACHE", str(tmp_path / "cache"))


def _tar(path: Path, entries: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_folder_resolves_to_itself(tiny_llama_dir):
    assert resolve_model(str(tiny_llama_dir)) == tiny_llama_dir


def test_model_tar_gz_is_unpacked_once(tiny_llama_dir, tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in tiny_llama_dir.iterdir():
            tar.add(f, arcname=f.name)
    first = resolve_model(str(archive))
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    assert resolve_model(str(archive)) == first  # cached


def test_default_alias_uses_the_converted_bundled_model(smollm2_dir, monkeypatch):
    monkeypatch.delenv("STREAMHOST_CACHE")  # the session's shared conversion
    assert resolve_model("smollm2") == smollm2_dir == ensure_default_model()
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tokenizer.json").is_file()


def test_unknown_hub_id_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="could not download 'nobody/no-such-model'"):
        resolve_model("nobody/no-such-model")


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model path"):
        resolve_model(str(tmp_path / "absent"))


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil", "a/../../escape"])
def test_archive_rejects_paths_outside(tmp_path, name):
    archive = _tar(tmp_path / "bad.tar.gz", {"config.json": b"{}", name: b"x"})
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="outside|absolute"):
        unpack_model_archive(archive, target)
    assert not (tmp_path / "escape.txt").exists()
    assert list(target.iterdir()) == []  # nothing written when any entry is bad


def test_archive_rejects_links_and_oversize(tmp_path):
    linked = _tar(tmp_path / "link.tar.gz", {"config.json": b"{}"}, links={"weights": "/etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="link"):
        unpack_model_archive(linked, tmp_path / "a")
    big = _tar(tmp_path / "big.tar.gz", {"config.json": b"{}" * 100})
    with pytest.raises(UnsafeArchiveError, match="more than 50 bytes"):
        unpack_model_archive(big, tmp_path / "b", max_bytes=50)
