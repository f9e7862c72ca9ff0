"""One read per byte: the kernel copy hashed behind itself, byte ranges, parallel shards, known digests."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from helpers.tiny_models import SMALL_SHARD, save_tiny_model

import vhctl.checkpoint.manifest as manifest_module
import vhctl.io.hashing as hashing
import vhctl.io.transfer as transfer
from vhctl.checkpoint.validate import validate_checkpoint
from vhctl.constants import MANIFEST_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from vhctl.errors import DestinationExistsError, UnsupportedModelError
from vhctl.io.hashing import Cancelled, copy_file, copy_hashing, write_hashing
from vhctl.io.transfer import FileTransfers
from vhctl.ops.wrap import wrap_model

SMALL = 64 * 1024  # chunk size for these tests: many steps on small files


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Chunks of 64 KiB and writeback every 128 KiB; records the writeback calls."""
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(hashing, "CHUNK", SMALL)
    monkeypatch.setattr(hashing, "STEP", SMALL)
    monkeypatch.setattr(hashing, "_WRITEBACK", 2 * SMALL)
    real = hashing._start_writeback
    monkeypatch.setattr(
        hashing, "_start_writeback", lambda fd, o, n: (calls.append((fd, o, n)), real(fd, o, n))
    )
    return calls


def _data(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(size) if size else b""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 3, 5 * SMALL + 17])
@pytest.mark.parametrize("kernel", [True, False])
def test_copy_digest_is_that_of_the_file_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int,
                                                 kernel: bool) -> None:  # fmt: skip
    if not kernel:  # a filesystem pair without copy_file_range: through a buffer

        def refuse(*_a: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(hashing.os, "copy_file_range", refuse, raising=False)
    src = tmp_path / "src"
    src.write_bytes(_data(size))
    digest = copy_hashing(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert digest == _sha((tmp_path / "dst").read_bytes())


def test_writeback_is_started_as_the_file_grows(
    tmp_path: Path, _small_chunks: list[tuple[int, int, int]]
) -> None:
    (tmp_path / "src").write_bytes(_data(7 * SMALL))
    copy_hashing(tmp_path / "src", tmp_path / "dst")
    ranges = [(offset, n) for _, offset, n in _small_chunks]
    assert ranges and ranges[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:], strict=False))  # back to back, no gap


def test_the_digest_follows_the_bytes_written_not_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source rewritten in the middle of the copy: the digest is still that of the new file."""
    src = tmp_path / "src"
    src.write_bytes(_data(4 * SMALL, seed=1))
    real = hashing._Copier.copy
    calls = []

    def copy_then_change(self: hashing._Copier, path: Path, offset: int, count: int) -> int:
        n = real(self, path, offset, count)
        calls.append(n)
        if len(calls) == 1:
            src.write_bytes(_data(4 * SMALL, seed=2))  # same size, other bytes
        return n

    monkeypatch.setattr(hashing._Copier, "copy", copy_then_change)
    digest = copy_hashing(src, tmp_path / "dst")
    written = (tmp_path / "dst").read_bytes()
    assert written[:SMALL] == _data(4 * SMALL, seed=1)[:SMALL] and written[SMALL:] == src.read_bytes()[SMALL:]
    assert digest == _sha(written) != _sha(src.read_bytes())


def test_write_hashing_joins_a_head_and_byte_ranges(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(_data(3 * SMALL, seed=3))
    b.write_bytes(_data(2 * SMALL, seed=4))
    ranges = [(a, 10, SMALL), (a, 10 + SMALL, SMALL + 5), (b, 7, 100), (a, 0, 0), (b, SMALL, SMALL)]
    head = b"header!"
    digest = write_hashing(tmp_path / "out", head, ranges)
    expected = head + b"".join(Path(p).read_bytes()[o : o + n] for p, o, n in ranges)
    assert (tmp_path / "out").read_bytes() == expected and digest == _sha(expected)


def test_write_hashing_refuses_a_range_past_the_end(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(_data(SMALL))
    with pytest.raises(EOFError, match="inside a range"):
        write_hashing(tmp_path / "out", b"", [(tmp_path / "a", SMALL - 10, 20)])


def test_a_cancelled_copy_stops(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(_data(4 * SMALL))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        copy_hashing(tmp_path / "src", tmp_path / "dst", cancel=cancel)


def test_copy_file_copies_without_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "_Follower", None)  # would fail if a hash were started
    (tmp_path / "src").write_bytes(_data(3 * SMALL + 1))
    assert copy_file(tmp_path / "src", tmp_path / "dst") == 3 * SMALL + 1
    assert (tmp_path / "dst").read_bytes() == (tmp_path / "src").read_bytes()


# -- the pool ------------------------------------------------------------------------------------------
def _track_copies(monkeypatch: pytest.MonkeyPatch, delay: float) -> tuple[list[int], list[str]]:
    """Make each copy take ``delay`` s longer; returns [most copies running at once] and the files copied."""
    running, most, copied = [0], [0], []
    lock = threading.Lock()
    real = transfer.copy_hashing

    def tracked(src: Path, dst: Path, *, cancel: threading.Event | None = None) -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(delay)  # long enough for another worker to start meanwhile
            copied.append(Path(dst).name)
            return real(src, dst, cancel=cancel)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(transfer, "copy_hashing", tracked)
    return most, copied


def test_files_are_copied_and_hashed_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    most, _ = _track_copies(monkeypatch, 0.2)
    sources = []
    for i in range(5):
        sources.append(tmp_path / f"s{i}")
        sources[-1].write_bytes(_data(2 * SMALL + i, seed=i))
    (tmp_path / "out").mkdir()
    with FileTransfers(workers=2) as transfers:
        for src in sources:
            transfers.copy(src, tmp_path / "out" / src.name)
        digests = [transfers.digest(tmp_path / "out" / src.name) for src in sources]
    assert most[0] == 2
    assert digests == [_sha((tmp_path / "out" / src.name).read_bytes()) for src in sources]
    assert digests == [_sha(src.read_bytes()) for src in sources]


def test_link_hashes_the_linked_file(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(_data(3 * SMALL))
    with FileTransfers() as transfers:
        transfers.copy(tmp_path / "src", tmp_path / "dst", link=True)
        assert transfers.digest(tmp_path / "dst") == _sha((tmp_path / "src").read_bytes())
    assert os.stat(tmp_path / "dst").st_ino == os.stat(tmp_path / "src").st_ino


def test_link_falls_back_to_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*_a: object, **_k: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(transfer.os, "link", no_links)
    (tmp_path / "src").write_bytes(_data(3 * SMALL))
    with FileTransfers() as transfers:
        transfers.copy(tmp_path / "src", tmp_path / "dst", link=True)
        assert transfers.digest(tmp_path / "dst") == _sha((tmp_path / "dst").read_bytes())
    assert os.stat(tmp_path / "dst").st_ino != os.stat(tmp_path / "src").st_ino


def test_a_known_digest_is_not_computed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hashing(*_a: object, **_k: object) -> str:
        raise AssertionError("hashed a file whose digest was known")

    monkeypatch.setattr(transfer, "copy_hashing", no_hashing)
    monkeypatch.setattr(transfer, "hash_stable", no_hashing)
    (tmp_path / "src").write_bytes(_data(SMALL))
    with FileTransfers() as transfers:
        transfers.copy(tmp_path / "src", tmp_path / "copy", digest="ab" * 32)
        transfers.copy(tmp_path / "src", tmp_path / "link", link=True, digest="cd" * 32)
        assert transfers.digest(tmp_path / "copy") == "ab" * 32
        assert transfers.digest(tmp_path / "link") == "cd" * 32
    assert (tmp_path / "copy").read_bytes() == (tmp_path / "src").read_bytes()


def test_discard_and_errors(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(_data(4 * SMALL))
    with FileTransfers() as transfers:
        transfers.copy(tmp_path / "src", tmp_path / "dst")
        transfers.discard(tmp_path / "dst")
        assert not transfers.started(tmp_path / "dst") and not (tmp_path / "dst").exists()
        transfers.copy(tmp_path / "missing", tmp_path / "dst2")
        with pytest.raises(FileNotFoundError):
            transfers.digest(tmp_path / "dst2")


# -- wrap: sharded bases are hashed in parallel, from the bytes copied ------------------------------
def test_wrap_hashes_shards_in_parallel_while_copying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = save_tiny_model("gpt2", tmp_path / "base", max_shard_size=SMALL_SHARD)
    shards = sorted(set(json.loads((src / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"].values()))
    assert len(shards) >= 3
    monkeypatch.setattr(transfer, "usable_cores", lambda: 2)
    most, copied = _track_copies(monkeypatch, 0.1)
    read: list[str] = []
    real_sha = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", lambda p: (read.append(Path(p).name), real_sha(p))[1])
    out = tmp_path / "ckpt"
    wrap_model(str(src), out, seed=0)
    files = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert sorted(copied) == shards and most[0] == 2
    for shard in shards:
        assert files[shard]["sha256"] == _sha((out / shard).read_bytes()) == _sha((src / shard).read_bytes())
        assert shard not in read  # hashed while copied, not read again for the manifest
    assert validate_checkpoint(out, deep=True) == []


@pytest.mark.parametrize("force", [False, True])
def test_the_source_s_errors_come_before_the_output_s(tmp_path: Path, force: bool) -> None:
    """The output folder is opened before the config is read (to start copying): a bad source is
    still what is reported, and nothing is left behind, whatever the output folder holds."""
    src = save_tiny_model("gpt2", tmp_path / "src", with_tokenizer=False)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(UnsupportedModelError, match="no-such-model"):
        wrap_model(str(src), out, force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert [p.name for p in out.iterdir()] == ["keep"] and (out / "keep").read_text() == "mine"
    assert (src / SAFE_WEIGHTS_NAME).is_file()
    (src / "config.json").write_text(json.dumps(config))
    if not force:
        with pytest.raises(DestinationExistsError):
            wrap_model(str(src), out)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_the_hash_reads_when_the_new_file_cannot_be_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENODEV, "no mmap on this filesystem")

    monkeypatch.setattr(hashing.mmap, "mmap", refuse)
    (tmp_path / "src").write_bytes(_data(5 * SMALL + 3))
    digest = copy_hashing(tmp_path / "src", tmp_path / "dst")
    assert digest == _sha((tmp_path / "dst").read_bytes()) == _sha((tmp_path / "src").read_bytes())
