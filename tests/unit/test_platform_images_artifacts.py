"""Image classification and model-data fetching (local paths, file://, tar archives, confinement)."""

from __future__ import annotations

import io
import tarfile

import pytest

from streamhost.platform.artifacts import ArtifactError, ArtifactStore, ModelData, model_data_of
from streamhost.platform.images import ImageError, classify_image


@pytest.mark.parametrize(
    "image, dialect",
    [
        (
            "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.1.1-tgi2.0.0-gpu-py310-cu121-ubuntu22.04",
            "tgi",
        ),
        ("ghcr.io/huggingface/text-generation-inference:1.4", "tgi"),
        ("763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.29.0-lmi11.0.0-cu124", "lmi"),
        ("763104351884.dkr.ecr.us-west-2.amazonaws.com/djl-deepspeed:0.23.0-deepspeed0.9.5-cu118", "lmi"),
        ("djl-lmi:latest", "lmi"),
        ("streamhost", None),
        (None, None),
        ("", None),
    ],
)
def test_images_map_to_a_dialect(image, dialect):
    kind = classify_image(image)
    assert (kind.kind, kind.dialect) == ("server", dialect)


def test_url_image_is_an_external_server():
    kind = classify_image("http://10.0.0.5:8080/")
    assert (kind.kind, kind.url) == ("external", "http://10.0.0.5:8080")
    with pytest.raises(ImageError):
        classify_image("http://:80")


def test_model_data_of_reads_url_and_source():
    assert model_data_of({"ModelDataUrl": "s3://b/k.tar.gz"}) == ModelData("s3://b/k.tar.gz")
    source = {
        "ModelDataSource": {"S3DataSource": {"S3Uri": "s3://b/p/", "S3DataType": "S3Prefix", "CompressionType": "None"}}
    }
    assert model_data_of(source) == ModelData("s3://b/p/", compressed=False, prefix=True)
    assert model_data_of({"Image": "x"}) is None


def _tar(path, entries):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tarball_is_unpacked_once_and_cached(tmp_path):
    archive = _tar(tmp_path / "model.tar.gz", {"config.json": b"{}", "sub/w.bin": b"123"})
    store = ArtifactStore(tmp_path / "artifacts")
    folder = store.fetch(ModelData(f"file://{archive}"))
    assert (folder / "config.json").read_bytes() == b"{}"
    assert (folder / "sub" / "w.bin").read_bytes() == b"123"
    assert store.fetch(ModelData(str(archive))) == folder
    assert [p.name for p in (tmp_path / "artifacts").iterdir()] == [folder.name]  # no temp folders left


def test_traversal_archive_is_refused_and_leaves_nothing(tmp_path):
    archive = _tar(tmp_path / "evil.tar.gz", {"ok.txt": b"x", "../escape.txt": b"owned"})
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ArtifactError, match="outside"):
        store.fetch(ModelData(str(archive)))
    assert not (tmp_path / "escape.txt").exists()
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_local_folder_is_used_in_place(tmp_path):
    (tmp_path / "m").mkdir()
    store = ArtifactStore(tmp_path / "artifacts")
    assert store.fetch(ModelData(str(tmp_path / "m"))) == (tmp_path / "m").resolve()


def test_check_refuses_missing_paths_and_unknown_schemes(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ArtifactError, match="Could not access"):
        store.check(ModelData(str(tmp_path / "nope.tar.gz")))
    with pytest.raises(ArtifactError, match="unsupported scheme"):
        store.check(ModelData("ftp://host/x"))
    store.check(ModelData("s3://bucket/key.tar.gz"))  # existence is checked when the endpoint starts


def test_allowed_roots_confine_local_paths(tmp_path):
    inside = tmp_path / "models" / "m"
    inside.mkdir(parents=True)
    store = ArtifactStore(tmp_path / "artifacts", allowed_roots=[tmp_path / "models"])
    assert store.fetch(ModelData(str(inside))) == inside.resolve()
    with pytest.raises(ArtifactError, match="must be under"):
        store.check(ModelData(str(tmp_path)))
    with pytest.raises(ArtifactError, match="must be under"):
        store.check(ModelData(f"file://{tmp_path}/models/../artifacts"))


def test_size_limit_applies_to_archives(tmp_path):
    archive = _tar(tmp_path / "big.tar.gz", {"w.bin": b"0" * 5000})
    store = ArtifactStore(tmp_path / "artifacts", max_bytes=1000)
    with pytest.raises(ArtifactError, match="more than 1000 bytes"):
        store.fetch(ModelData(str(archive)))


def test_s3_object_and_prefix(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        archive = _tar(tmp_path / "model.tar.gz", {"config.json": b"{}"})
        s3.upload_file(str(archive), "models", "tiny/model.tar.gz")
        s3.put_object(Bucket="models", Key="plain/config.json", Body=b"{}")
        s3.put_object(Bucket="models", Key="plain/sub/w.bin", Body=b"1")
        store = ArtifactStore(tmp_path / "artifacts")
        folder = store.fetch(ModelData("s3://models/tiny/model.tar.gz"))
        assert (folder / "config.json").read_bytes() == b"{}"
        folder = store.fetch(ModelData("s3://models/plain/", compressed=False, prefix=True))
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
            "config.json",
            "sub/w.bin",
        ]
        with pytest.raises(ArtifactError, match="Could not access model data at s3://models/missing.tar.gz"):
            store.fetch(ModelData("s3://models/missing.tar.gz"))
