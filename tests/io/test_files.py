"""File helpers: the background hasher that saves wrap its second read of the weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers.tiny_models import save_tiny_model

import vhctl.checkpoint.manifest as manifest_module
from vhctl.constants import MANIFEST_NAME, SAFE_WEIGHTS_NAME
from vhctl.io.files import BackgroundHasher, sha256_file
from vhctl.ops.wrap import wrap_model


def _write(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(bytes((i * 31 + seed) % 251 for i in range(size)))
    return path


def test_digest_matches_a_plain_read(tmp_path: Path) -> None:
    files = [_write(tmp_path / f"f{i}", size, i) for i, size in enumerate((0, 1, 9 * 1024 * 1024 + 3))]
    with BackgroundHasher() as hasher:
        for path in files:
            hasher.submit(path)
        for path in files:
            assert hasher.digest(path) == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)


def test_a_file_changed_after_submit_gets_no_digest(tmp_path: Path) -> None:
    path = _write(tmp_path / "w", 4096)
    with BackgroundHasher() as hasher:
        hasher.submit(path)
        hasher._jobs[path.absolute()][1].result()  # hashed the old bytes
        _write(path, 4097, seed=5)  # a writer changes it before the copy is checked
        assert hasher.digest(path) is None


def test_same_size_rewrite_is_caught_by_mtime(tmp_path: Path) -> None:
    path = _write(tmp_path / "w", 4096)
    with BackgroundHasher() as hasher:
        hasher.submit(path)
        hasher._jobs[path.absolute()][1].result()
        _write(path, 4096, seed=9)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert hasher.digest(path) is None


def test_unknown_or_missing_files_get_none(tmp_path: Path) -> None:
    with BackgroundHasher() as hasher:
        hasher.submit(tmp_path / "missing")
        assert hasher.digest(tmp_path / "missing") is None
        assert hasher.digest(_write(tmp_path / "never-submitted", 10)) is None


def test_close_stops_a_long_hash(tmp_path: Path) -> None:
    path = _write(tmp_path / "big", 64 * 1024 * 1024)
    hasher = BackgroundHasher()
    hasher.submit(path)
    hasher.close()
    result = hasher._jobs[path.absolute()][1].result()
    assert result is None or result == sha256_file(path)  # None unless it finished before the stop


@pytest.mark.parametrize("link", [False, True])
def test_wrap_takes_the_weights_digest_from_the_hasher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link: bool
) -> None:
    src = save_tiny_model("gpt2", tmp_path / "base")
    read: list[str] = []
    real = manifest_module.sha256_file

    def counting(path: os.PathLike[str]) -> str:
        read.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    out = tmp_path / "ckpt"
    wrap_model(str(src), out, link=link)
    files = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert files[SAFE_WEIGHTS_NAME]["sha256"] == sha256_file(out / SAFE_WEIGHTS_NAME)
    assert SAFE_WEIGHTS_NAME not in read  # hashed while copying, not read again
    assert "value_head.safetensors" in read  # written here: hashed at the end as before


def test_wrap_hashes_again_when_the_source_digest_is_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = save_tiny_model("gpt2", tmp_path / "base")
    monkeypatch.setattr(BackgroundHasher, "digest", lambda self, path: None)
    out = tmp_path / "ckpt"
    wrap_model(str(src), out)
    files = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert files[SAFE_WEIGHTS_NAME]["sha256"] == sha256_file(out / SAFE_WEIGHTS_NAME)
