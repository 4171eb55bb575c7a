"""DJL's model-folder rules: the single top-level folder, and what ``option.model_id`` may name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamhost.platform.artifacts import ArtifactError, ArtifactStore
from streamhost.platform.lmi_packaging import prepare_model_data
from streamhost.server.config import SettingsError, load_settings
from streamhost.server.model_folder import ModelFolderError, locate_model, model_root


def weights(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


def properties(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "serving.properties").write_text(text)
    return folder


def test_single_top_level_folder_is_the_model_folder(tmp_path):
    inner = properties(tmp_path / "unpacked" / "mymodel", "option.model_id=w\n")
    (tmp_path / "unpacked" / "__MACOSX").mkdir()
    (tmp_path / "unpacked" / ".DS_Store").write_text("")
    assert model_root(tmp_path / "unpacked") == inner
    # Not unwrapped: a root with its own serving.properties or weights, or with two entries.
    assert model_root(inner) == inner
    two = tmp_path / "two"
    (two / "a").mkdir(parents=True)
    (two / "b").mkdir()
    assert model_root(two) == two
    assert model_root(weights(tmp_path / "w")) == tmp_path / "w"


def test_model_id_kinds(tmp_path):
    folder = weights(tmp_path / "m")
    weights(folder / "tiny")
    (folder / "q.gguf").write_bytes(b"GGUF")
    assert locate_model(folder, None, "f").kind == "folder"
    assert locate_model(folder, "tiny", "f").reference == str(folder / "tiny")
    assert locate_model(folder, "./tiny", "f").kind == "folder"
    assert locate_model(folder, "q.gguf", "f").kind == "file"
    assert locate_model(folder, str(folder / "tiny"), "f").kind == "folder"
    assert locate_model(folder, "s3://bucket/prefix/", "f").kind == "s3"
    hub = locate_model(folder, "TheBloke/Llama-2-7B-fp16", "f")
    assert (hub.kind, hub.reference, hub.looked_at) == (
        "hub",
        "TheBloke/Llama-2-7B-fp16",
        str(folder / "TheBloke/Llama-2-7B-fp16"),
    )


@pytest.mark.parametrize(
    ("model_id", "says"),
    [
        (None, ["sets no option.model_id", "holds no config.json or .gguf", "it holds empty/, notes.txt"]),
        ("./weights", ["option.model_id='./weights'", "names nothing loadable", "/m/weights"]),
        ("../outside", ["points outside the model folder"]),
        ("empty", ["is the folder", "/m/empty", "it is empty"]),
        ("notes.txt", ["is the file", "not a model folder"]),
        ("https://example.org/model", ["not loadable"]),
    ],
)
def test_nothing_loadable_says_what_and_where(tmp_path, model_id, says):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    (folder / "empty").mkdir()
    (tmp_path / "outside").mkdir()
    with pytest.raises(ModelFolderError) as info:
        locate_model(folder, model_id, "mymodel/serving.properties")
    message = str(info.value)
    assert "mymodel/serving.properties" in message
    for part in says:
        assert part in message, message


def test_container_settings_read_the_wrapped_folder(tmp_path):
    """``streamhost container --model-dir`` on an unpacked ``tar czvf model.tar.gz mymodel/``."""
    inner = properties(tmp_path / "unpacked" / "mymodel", "option.model_id=tiny\noption.output_formatter=jsonlines\n")
    weights(inner / "tiny")
    settings = load_settings(None, {"STREAMHOST_MODEL_DIR": str(tmp_path / "unpacked")})
    assert settings.dialect == "lmi" and settings.model_dir == inner
    assert settings.model_id == str(inner / "tiny")
    assert settings.properties.output_formatter == "jsonlines"
    properties(inner, "option.model_id=org/name\n")  # not in the folder, shaped like a hub id: the loader asks the hub
    assert load_settings(None, {"STREAMHOST_MODEL_DIR": str(tmp_path / "unpacked")}).model_id == "org/name"
    properties(inner, "option.model_id=./missing/weights\n")
    with pytest.raises(SettingsError, match="option.model_id='./missing/weights'.*names nothing loadable"):
        load_settings(None, {"STREAMHOST_MODEL_DIR": str(tmp_path / "unpacked")})
    properties(inner, "option.model_id=s3://bucket/weights/\n")
    with pytest.raises(SettingsError, match="the platform does this"):
        load_settings(None, {"STREAMHOST_MODEL_DIR": str(tmp_path / "unpacked")})


def test_platform_preparation_fails_with_the_place_it_looked(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    unpacked = tmp_path / "unpacked"
    (unpacked / "mymodel").mkdir(parents=True)
    (unpacked / "mymodel" / "README").write_text("")
    with pytest.raises(
        ArtifactError,
        match=r"holds no serving.properties, config.json or .gguf file: looked in mymodel of s3://b/model.tar.gz \(it holds README\)",
    ):
        asyncio.run(prepare_model_data(store, unpacked, "s3://b/model.tar.gz", {}, 10))
    # An Environment naming the model lets the model server resolve it.
    prepared = asyncio.run(prepare_model_data(store, unpacked, "s3://b/model.tar.gz", {"HF_MODEL_ID": "smollm2"}, 10))
    assert prepared.model_dir == unpacked / "mymodel" and prepared.model_id is None
    properties(unpacked / "mymodel", "option.model_id=tiny\n")
    with pytest.raises(
        ArtifactError,
        match=r"option.model_id='tiny' \(from mymodel/serving.properties in s3://b/model.tar.gz\) is not a folder in the model data",
    ):
        asyncio.run(prepare_model_data(store, unpacked, "s3://b/model.tar.gz", {}, 10))
    weights(unpacked / "mymodel" / "tiny")
    prepared = asyncio.run(prepare_model_data(store, unpacked, "s3://b/model.tar.gz", {}, 10))
    assert prepared.model_dir == unpacked / "mymodel" and prepared.model_id is None
