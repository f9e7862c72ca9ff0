"""A model in the Hugging Face cache: an LFS blob's name is its sha256, so wrap does not read it again,
says so in the manifest, and reads it anyway with ``--verify``.

The cache is laid out by hand the way huggingface_hub lays it out (``blobs/<sha256>`` for LFS files,
``blobs/<git sha1>`` for the others, ``snapshots/<commit>/`` symlinks, ``refs/main``), and once by
huggingface_hub itself from the loopback hub of tests/hub_server.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers.tiny_models import SMALL_SHARD, save_tiny_model

import vhctl.checkpoint.manifest as manifest_module
import vhctl.io.transfer as transfer
from vhctl.checkpoint.validate import validate_checkpoint
from vhctl.constants import MANIFEST_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from vhctl.errors import IntegrityError
from vhctl.io.hf_cache import cached_blob_digest
from vhctl.ops.base_files import copy_safetensors_base
from vhctl.ops.wrap import wrap_model

if TYPE_CHECKING:
    from helpers.hub_server import LoopbackHub


REPO = "tester/tiny-base"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _blob_entry(snapshot: Path, name: str = SAFE_WEIGHTS_NAME) -> Path:
    """``<repo>/blobs/<sha256>`` as the snapshot's link names it (not resolved further)."""
    return Path(os.path.normpath(snapshot.resolve() / os.readlink(snapshot / name)))


def _corrupt(blob: Path) -> None:
    """Flip the last byte of the last tensor: same size, other bytes, the name unchanged."""
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))


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
    # where that digest came from: the blob's name, not the bytes (the other files were hashed)
    assert manifest["extra"] == {"sha256_from_cache_blob": {SAFE_WEIGHTS_NAME: str(_blob_entry(snapshot))}}
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
    assert (
        known.sha256[SAFE_WEIGHTS_NAME]
        == _sha(tmp_path / "out" / SAFE_WEIGHTS_NAME)
        == _sha(blob)
        != blob.name
    )
    assert known.from_blob == {}  # hashed: no blob to name


def test_validate_names_the_cache_blob_a_wrong_digest_came_from(tmp_path: Path, offline_cache: Path) -> None:
    """Same size, other bytes: plain wrap trusts the name and records that it did; validate reads
    every byte, and its message names the blob and the cache as the likely cause."""
    snapshot = _cache_repo(offline_cache, save_tiny_model("gpt2", tmp_path / "model"))
    blob = (snapshot / SAFE_WEIGHTS_NAME).resolve()
    _corrupt(blob)
    out = tmp_path / "ckpt"
    wrap_model(REPO, out, seed=0)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["files"][SAFE_WEIGHTS_NAME]["sha256"] == blob.name != _sha(out / SAFE_WEIGHTS_NAME)
    assert manifest["extra"]["sha256_from_cache_blob"] == {SAFE_WEIGHTS_NAME: str(_blob_entry(snapshot))}
    problems = validate_checkpoint(out)
    assert [(p.code, p.file) for p in problems] == [("hash-mismatch", SAFE_WEIGHTS_NAME)]
    assert str(_blob_entry(snapshot)) in problems[0].message
    assert f"corrupt in the cache {offline_cache}" in problems[0].message
    assert "the manifest was edited" not in problems[0].message


def test_validate_blames_the_file_when_the_digest_was_hashed(tmp_path: Path, offline_cache: Path) -> None:
    """A digest wrap computed from the bytes: a later mismatch is the file's (or the manifest's)."""
    _cache_repo(offline_cache, save_tiny_model("gpt2", tmp_path / "model"))
    out = tmp_path / "ckpt"
    wrap_model(REPO, out, seed=0, verify=True)
    assert "sha256_from_cache_blob" not in json.loads((out / MANIFEST_NAME).read_text())["extra"]
    _corrupt(out / SAFE_WEIGHTS_NAME)
    problems = validate_checkpoint(out)
    assert [(p.code, p.file) for p in problems] == [("hash-mismatch", SAFE_WEIGHTS_NAME)]
    assert "the file changed, or the manifest was edited" in problems[0].message
    assert "cache" not in problems[0].message


@pytest.mark.parametrize("link", [False, True])
def test_wrap_verify_hashes_a_good_blob(
    tmp_path: Path, offline_cache: Path, hashed: list[str], link: bool
) -> None:
    snapshot = _cache_repo(offline_cache, save_tiny_model("gpt2", tmp_path / "model"))
    out = tmp_path / "ckpt"
    wrap_model(REPO, out, seed=0, verify=True, link=link)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert SAFE_WEIGHTS_NAME in hashed  # read this time
    assert manifest["files"][SAFE_WEIGHTS_NAME]["sha256"] == (snapshot / SAFE_WEIGHTS_NAME).resolve().name
    assert manifest["extra"] == {}  # every digest is that of the bytes written
    assert validate_checkpoint(out) == []


@pytest.mark.parametrize("link", [False, True])
def test_wrap_verify_refuses_a_corrupt_blob_and_writes_nothing(tmp_path: Path, offline_cache: Path,
                                                              link: bool) -> None:  # fmt: skip
    snapshot = _cache_repo(offline_cache, save_tiny_model("gpt2", tmp_path / "model"))
    _corrupt((snapshot / SAFE_WEIGHTS_NAME).resolve())
    out = tmp_path / "ckpt"
    with pytest.raises(IntegrityError) as caught:
        wrap_model(REPO, out, seed=0, verify=True, link=link)
    assert str(_blob_entry(snapshot)) in caught.value.message and str(offline_cache) in caught.value.message
    assert "corrupt" in caught.value.message and REPO in (caught.value.hint or "")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf-cache", "model"]  # no half-written folder


def test_cli_wrap_verify_refuses_with_one_line(tmp_path: Path, offline_cache: Path) -> None:
    """The command: exit non-zero, one line naming the blob and the cache, no traceback, no folder."""
    snapshot = _cache_repo(offline_cache, save_tiny_model("gpt2", tmp_path / "model"))
    _corrupt((snapshot / SAFE_WEIGHTS_NAME).resolve())
    out = tmp_path / "ckpt"
    env = {**os.environ, "HF_HUB_CACHE": str(offline_cache), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "vhctl", "wrap", REPO, "--out", str(out), "--verify"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == IntegrityError.exit_code != 0, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(_blob_entry(snapshot)) in errors[0] and str(offline_cache) in errors[0]
    assert "Traceback" not in run.stderr and not out.exists()
    plain = subprocess.run([sys.executable, "-m", "vhctl", "wrap", REPO, "--out", str(out), "--json"],
                           capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert plain.returncode == 0, plain.stderr  # without --verify the name is trusted, and recorded
    check = subprocess.run([sys.executable, "-m", "vhctl", "validate", str(out)],
                           capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert check.returncode != 0 and str(_blob_entry(snapshot)) in check.stdout + check.stderr


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
