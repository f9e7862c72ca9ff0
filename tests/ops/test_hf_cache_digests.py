"""A model in the Hugging Face cache: an LFS blob's name is its sha256, so wrap does not read it again.

The cache is laid out by hand the way huggingface_hub lays it out (``blobs/<sha256>`` for LFS files,
``blobs/<git sha1>`` for the others, ``snapshots/<commit>/`` symlinks, ``refs/main``), and once by
huggingface_hub itself from the loopback hub of tests/hub_server.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers.tiny_models import SMALL_SHARD, save_tiny_model

import vhctl.checkpoint.manifest as manifest_module
import vhctl.io.transfer as transfer
from vhctl.checkpoint.validate import validate_checkpoint
from vhctl.constants import MANIFEST_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from vhctl.io.hf_cache import cached_blob_digest
from vhctl.ops.base_files import copy_safetensors_base
from vhctl.ops.wrap import wrap_model

if TYPE_CHECKING:
    from helpers.hub_server import LoopbackHub


REPO = "tester/tiny-base"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_repo(cache: Path, model: Path, repo: str = REPO) -> Path:
    """Move ``model``'s files into ``cache`` as huggingface_hub stores a download; the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    blobs, snapshot = root / "blobs", root / "snapshots" / COMMIT
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for path in sorted(model.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".safetensors":  # LFS: named by the sha256 of the content
            name = hashlib.sha256(data).hexdigest()
        else:  # a regular git file: named by its git blob sha1
            name = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (blobs / name).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", name))
    return snapshot


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files whose bytes wrap hashed (while copying, or afterwards for the manifest)."""
    names: list[str] = []
    for module, name in (
        (transfer, "copy_hashing"),
        (transfer, "hash_stable"),
        (manifest_module, "sha256_file"),
    ):
        real = getattr(module, name)

        def spy(path: Path, *args: object, _real=real, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
            names.append(Path(path).name)  # copy_hashing(src, dst): src has the name of what it writes
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return names


@pytest.mark.parametrize("link", [False, True])
def test_wrap_takes_the_digest_from_the_blob_name(tmp_path: Path, offline_cache: Path, hashed: list[str],
                                                  link: bool) -> None:  # fmt: skip
    snapshot = _cache_repo(offline_cache, save_tiny_model("gpt2", tmp_path / "model"))
    blob = (snapshot / SAFE_WEIGHTS_NAME).resolve()
    out = tmp_path / "ckpt"
    result = wrap_model(REPO, out, seed=0, link=link)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["base_model"] == {"source": REPO, "revision": COMMIT}
    assert manifest["files"][SAFE_WEIGHTS_NAME]["sha256"] == blob.name == _sha(out / SAFE_WEIGHTS_NAME)
    assert SAFE_WEIGHTS_NAME not in hashed  # neither while copying nor for the manifest
    assert "value_head.safetensors" in hashed  # written here: hashed as before
    assert (os.stat(out / SAFE_WEIGHTS_NAME).st_ino == blob.stat().st_ino) is link
    assert result.files == sorted(manifest["files"]) and validate_checkpoint(out, deep=True) == []


def test_sharded_model_from_the_cache(tmp_path: Path, offline_cache: Path, hashed: list[str]) -> None:
    model = save_tiny_model("gpt2", tmp_path / "model", max_shard_size=SMALL_SHARD)
    shards = sorted(set(json.loads((model / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"].values()))
    snapshot = _cache_repo(offline_cache, model)
    out = tmp_path / "ckpt"
    wrap_model(str(snapshot), out, seed=0)  # the snapshot folder itself works the same as the hub id
    files = json.loads((out / MANIFEST_NAME).read_text())["files"]
    for shard in shards:
        assert files[shard]["sha256"] == (snapshot / shard).resolve().name == _sha(out / shard)
    assert not set(shards) & set(hashed)
    assert validate_checkpoint(out) == []


def test_a_blob_of_the_wrong_size_is_read(tmp_path: Path, hashed: list[str]) -> None:
    """A blob with bytes after the tensors its header describes: its name is not trusted.

    (safetensors itself refuses such a file when a model is loaded, so this is the copy alone.)
    """
    snapshot = _cache_repo(tmp_path / "cache", save_tiny_model("gpt2", tmp_path / "model"))
    blob = (snapshot / SAFE_WEIGHTS_NAME).resolve()
    with open(blob, "ab") as handle:
        handle.write(b"\0" * 64)
    (tmp_path / "out").mkdir()
    known = copy_safetensors_base(snapshot, tmp_path / "out", head_files=[], dtype=None, link=False)
    assert SAFE_WEIGHTS_NAME in hashed
    assert known[SAFE_WEIGHTS_NAME] == _sha(tmp_path / "out" / SAFE_WEIGHTS_NAME) == _sha(blob) != blob.name


def test_validate_catches_a_blob_whose_content_is_not_its_name(tmp_path: Path, offline_cache: Path) -> None:
    """Same size, other bytes: wrap trusts the name; validate reads every byte and says so."""
    snapshot = _cache_repo(offline_cache, save_tiny_model("gpt2", tmp_path / "model"))
    blob = (snapshot / SAFE_WEIGHTS_NAME).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor
    blob.write_bytes(bytes(data))
    out = tmp_path / "ckpt"
    wrap_model(REPO, out, seed=0)
    assert json.loads((out / MANIFEST_NAME).read_text())["files"][SAFE_WEIGHTS_NAME]["sha256"] == blob.name
    problems = validate_checkpoint(out)
    assert [(p.code, p.file) for p in problems] == [("hash-mismatch", SAFE_WEIGHTS_NAME)]


def test_only_a_blob_of_the_snapshot_s_own_repo_counts(tmp_path: Path) -> None:
    model = save_tiny_model("gpt2", tmp_path / "model", with_tokenizer=False)
    snapshot = _cache_repo(tmp_path / "cache", model)
    size = (snapshot / SAFE_WEIGHTS_NAME).stat().st_size
    assert (
        cached_blob_digest(snapshot / SAFE_WEIGHTS_NAME, size)
        == (snapshot / SAFE_WEIGHTS_NAME).resolve().name
    )
    assert cached_blob_digest(snapshot / SAFE_WEIGHTS_NAME, size + 1) is None
    assert cached_blob_digest(model.parent / "plain.safetensors", size) is None  # not a symlink
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / SAFE_WEIGHTS_NAME).symlink_to((snapshot / SAFE_WEIGHTS_NAME).resolve())
    assert cached_blob_digest(elsewhere / SAFE_WEIGHTS_NAME, size) is None  # a link made by hand
    fake = tmp_path / "fake" / "blobs"
    fake.mkdir(parents=True)
    shutil.copyfile(snapshot / SAFE_WEIGHTS_NAME, fake / ("0" * 64))
    (snapshot / "other.safetensors").symlink_to(fake / ("0" * 64))
    assert cached_blob_digest(snapshot / "other.safetensors", size) is None  # another repo's blob


@pytest.mark.parametrize("xet", [False, True])
def test_wrap_by_hub_id_uses_the_blobs_huggingface_hub_wrote(hub: LoopbackHub, tmp_path: Path, hashed: list[str],
                                                             monkeypatch: pytest.MonkeyPatch, xet: bool) -> None:  # fmt: skip
    """With Xet the repo's blobs/<sha256> is a link into a cache-wide store: the name still counts."""
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)

    model = save_tiny_model("gpt2", tmp_path / "model")
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(REPO)
    api.upload_folder(folder_path=str(model), repo_id=REPO)
    out = tmp_path / "ckpt"
    wrap_model(REPO, out, seed=0, link=True)
    digest = json.loads((out / MANIFEST_NAME).read_text())["files"][SAFE_WEIGHTS_NAME]["sha256"]
    assert digest == _sha(model / SAFE_WEIGHTS_NAME) == _sha(out / SAFE_WEIGHTS_NAME)
    assert SAFE_WEIGHTS_NAME not in hashed
    assert (out / SAFE_WEIGHTS_NAME).stat().st_nlink > 1  # linked to the bytes in the cache
    assert validate_checkpoint(out) == []
