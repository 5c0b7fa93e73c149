"""The artifact store (analysis.storage) on the local default and on an S3-compatible server (moto), and grids
stored and served from the object store through django-storages."""

from __future__ import annotations

import hashlib
import io
import urllib.request

import numpy as np
import pytest
from django.core.files.storage import FileSystemStorage, default_storage
from PIL import Image

from analysis import storage
from analysis.models import RenderedGrid
from analysis.services.grids import store_grid


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_local_default_is_the_data_dir_and_needs_no_server(settings, tmp_path):
    assert settings.UNITSCOPE_STORAGE_URL == ""
    assert isinstance(default_storage, FileSystemStorage)
    store = storage.artifact_store()
    assert not store.remote and store.scratch == settings.UNITSCOPE_DATA_DIR.resolve()
    file = _write(settings.UNITSCOPE_DATA_DIR / "dissections" / "7" / "plan.npz", b"plan")
    assert storage.publish(file) == "dissections/7/plan.npz"
    assert storage.stored_path(file) == str(file.resolve())  # the local default keeps absolute paths, as before
    assert storage.local_path("dissections/7/plan.npz") == file.resolve()
    assert storage.fetch("dissections/7/plan.npz") == file.resolve()
    assert storage.fetch(str(file)) == file.resolve()  # an absolute path under the data dir is a key too
    outside = _write(tmp_path / "elsewhere" / "index.csv", b"x")
    assert storage.stored_path(outside) == str(outside.resolve()) and storage.local_path(str(outside)) == outside
    with pytest.raises(FileNotFoundError):
        storage.fetch("dissections/8/plan.npz")
    for bad in ("../etc/passwd", "/abs", "a/../../b", ""):
        with pytest.raises(ValueError):
            storage.artifact_store().path(bad)


def test_two_scratch_dirs_share_artifacts_only_through_the_object_store(object_store, settings, tmp_path):
    options = storage.storage_options()
    web = storage.ArtifactStore(tmp_path / "web", object_store, options)
    worker = storage.ArtifactStore(tmp_path / "worker", object_store, options)
    maps = np.arange(2 * 3 * 4 * 4, dtype=np.float16).reshape(2, 3, 4, 4)
    cache = tmp_path / "web" / "activations" / "abc"
    cache.mkdir(parents=True)
    np.save(cache / "maps.npy", maps)
    _write(cache / "meta.json", b'{"shape": [2, 3, 4, 4]}')
    _write(cache / "maps.npy.1234.partial", b"half")  # never published
    assert web.publish(cache) == "activations/abc"
    assert worker.exists("activations/abc/meta.json") and not worker.exists("activations/abc/maps.npy.1234.partial")

    fetched = worker.fetch("activations/abc")
    assert fetched == tmp_path / "worker" / "activations" / "abc"
    assert sorted(p.name for p in fetched.iterdir()) == [storage.FETCHED_MARKER, "maps.npy", "meta.json"]
    worker.fs.find = lambda *a, **k: pytest.fail("listed the store again for a folder fetched whole")
    assert worker.fetch("activations/abc") == fetched
    del worker.fs.find
    assert np.array_equal(np.load(fetched / "maps.npy", mmap_mode="r"), maps)
    with pytest.raises(FileNotFoundError):
        worker.fetch("activations/missing/meta.json")

    # published outputs come back the other way; remove clears both sides
    shard = _write(tmp_path / "worker" / "dissections" / "3" / "shard-0001.npz", b"counts")
    worker.publish(shard)
    assert web.fetch("dissections/3/shard-0001.npz").read_bytes() == b"counts"
    worker.remove("dissections/3")
    assert not worker.exists("dissections/3/shard-0001.npz") and not shard.exists()


def test_an_interrupted_download_leaves_no_file(object_store, tmp_path, monkeypatch):
    options = storage.storage_options()
    source = storage.ArtifactStore(tmp_path / "a", object_store, options)
    target = storage.ArtifactStore(tmp_path / "b", object_store, options)
    source.publish(_write(tmp_path / "a" / "tallies" / "t.npz", b"x" * 100_000))

    def dies_half_way(remote, local, **kwargs):
        with open(local, "wb") as handle:
            handle.write(b"x" * 50_000)
        raise ConnectionError("worker lost the network")

    monkeypatch.setattr(target.fs, "get_file", dies_half_way)
    with pytest.raises(ConnectionError):
        target.fetch("tallies/t.npz")
    assert list((tmp_path / "b").rglob("*.npz")) == [] and list((tmp_path / "b").rglob("*.partial")) == []
    monkeypatch.undo()
    assert target.fetch("tallies/t.npz").read_bytes() == b"x" * 100_000


@pytest.mark.django_db
def test_grids_go_to_the_object_store_under_content_hashes_and_are_served_from_it(object_store, s3_bucket):
    endpoint, bucket = s3_bucket
    assert not isinstance(default_storage, FileSystemStorage)
    picture = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    grid = store_grid(picture, style="activation")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    assert grid.path == f"grids/{digest[:2]}/{digest}.png" and grid.sha256 == digest
    assert store_grid(picture, style="activation").pk == grid.pk and RenderedGrid.objects.count() == 1

    url = grid.url
    assert url.startswith(f"{endpoint}/{bucket}/site/media/grids/{digest[:2]}/{digest}.png?")
    assert "Signature" in url or "X-Amz-Signature" in url  # signed: the bucket need not be public
    with urllib.request.urlopen(url, timeout=10) as response:  # straight from the store, no Django in between
        assert response.read() == buffer.getvalue()


@pytest.mark.django_db
def test_public_media_urls_name_the_public_domain_and_carry_no_signature(object_store, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            **settings.STORAGES["default"],
            "OPTIONS": {
                **settings.STORAGES["default"]["OPTIONS"],
                "custom_domain": "media.example.org",
                "querystring_auth": False,
            },
        },
    }
    grid = store_grid(Image.new("RGB", (3, 3), "red"), style="activation")
    assert grid.url == f"https://media.example.org/site/media/{grid.path}"


def test_the_configured_store_reaches_the_server_with_the_settings_options(object_store, settings, tmp_path):
    store = storage.artifact_store()
    assert store.remote and store.url == object_store and store.scratch == settings.UNITSCOPE_DATA_DIR.resolve()
    assert store is storage.artifact_store()  # one per configuration
    file = _write(settings.UNITSCOPE_DATA_DIR / "extractions" / "1" / "conv5.pt", b"stats")
    assert storage.publish(file) == "extractions/1/conv5.pt" == storage.stored_path(file)  # keys with a store
    assert storage.stored_path(tmp_path / "elsewhere") == str((tmp_path / "elsewhere").resolve())
    file.unlink()
    assert storage.artifact_exists("extractions/1/conv5.pt") and not storage.artifact_exists("extractions/2/x.pt")
    assert storage.fetch("extractions/1/conv5.pt").read_bytes() == b"stats"


@pytest.mark.django_db
def test_a_registered_weights_file_is_published_and_read_back_through_the_store(object_store, settings, tmp_path):
    import torch

    from analysis.engine.demo_network import build_demo_network, demo_network_target
    from analysis.engine.networks import NetworkKind, NetworkSpec
    from analysis.services.networks import network_register, network_spec

    weights = tmp_path / "outside" / "weights.pt"
    weights.parent.mkdir()
    torch.save(build_demo_network(7, seed=3).state_dict(), weights)
    spec = NetworkSpec(
        kind=NetworkKind.MODULE,
        target=demo_network_target(),
        weights=str(weights),
        kwargs={"num_classes": 7},
        input_size=(64, 64),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    network = network_register(name="stored-net", spec=spec)
    network.refresh_from_db()
    assert network.weights_path == "networks/stored-net/weights/weights.pt"
    weights.unlink()  # another machine: only the store has it
    local = network_spec(network).weights
    assert local == str(settings.UNITSCOPE_DATA_DIR.resolve() / network.weights_path)
    assert set(torch.load(local)) == set(build_demo_network(7, seed=3).state_dict())
