"""sha256 of the files vhctl writes, computed while it writes them.

A checkpoint's manifest holds the sha256 of every file. Hashing a multi-GB file after copying it
reads it from the disk a second time. Here the source is read once, by the kernel
(``copy_file_range``; through a buffer where that is not available), and a second thread hashes
the new file right behind the copy, from the page cache the copy just filled: the digest is that of
the bytes written, whatever happens to the source meanwhile, and the copy and the hashing run on two
cores (neither holds the GIL while it works). Writeback to the disk is started as the file grows, so
the final ``fsync`` finds little left to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CHUNK",
    "STEP",
    "BackgroundHasher",
    "Cancelled",
    "copy_file",
    "copy_hashing",
    "hash_stable",
    "overlapped_imports",
    "read_range",
    "sha256_file",
    "write_hashing",
]

CHUNK = 16 * 1024 * 1024  # read and hashed at a time: a GIL hand-over costs little next to hashing it
# Copied by one copy_file_range call: each call has a fixed cost in the kernel (16 MiB steps cost
# about twice the system time of one call per file), and the hashing thread follows step by step.
STEP = 64 * 1024 * 1024
_WRITEBACK = STEP  # start writing dirty pages back to the disk every this many bytes
_SYNC_FILE_RANGE_WRITE = 2
_SWITCH_INTERVAL = 0.001

Signature = tuple[int, int, int, int]


class Cancelled(Exception):
    """A copy or hash stopped because its caller no longer wants it."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so memory stays flat for multi-GB shards."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def file_signature(path: str | os.PathLike[str]) -> Signature | None:
    """(device, inode, size, mtime): what changes when a file is replaced or written; None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _writeback_starter() -> Callable[[int, int, int], None]:
    """``start(fd, offset, length)``: ask the kernel to begin writing that range to the disk (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait for it); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return lambda fd, offset, length: None
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # advisory: a failure changes nothing

    return start


_start_writeback = _writeback_starter()


# copy_file_range refusals that mean "not here" (old kernel, across filesystems, unsupported file)
_FALLBACK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EXDEV", "EINVAL", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "EBADF")
    if hasattr(errno, name)
)

# A piece of the file to write: bytes as they are, or (file, offset, length) of another file
# (length None: to its end).
Piece = bytes | tuple[Path, int, int | None]


class _Follower:
    """sha256 of a file while another thread writes it, never reading past what was written.

    It hashes the new file's pages where they are, in the page cache the copy just filled (mapped
    into memory: no copy out of the cache, which costs about a third of the hashing's CPU time when
    read), so the digest is that of the file as written, whatever happens to the source meanwhile.
    The file is vhctl's own new file, which nothing else truncates while it is mapped.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by finish()
        self._cond = threading.Condition()
        self._written = 0
        self._done = False
        self._digest = hashlib.sha256()
        self._error: BaseException | None = None
        self._mapping = True  # until the platform or the filesystem refuses
        self._thread = threading.Thread(target=self._run, name="vhctl-sha256", daemon=True)
        self._thread.start()

    def advance(self, n: int) -> None:
        """``n`` more bytes are in the file."""
        with self._cond:
            self._written += n
            self._cond.notify()

    def finish(self) -> str:
        """Hash what is left; the hex digest. Raises what reading raised."""
        self._stop()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def _stop(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()
        self._file.close()

    def abort(self) -> None:
        """Stop without a digest (the writer failed)."""
        with self._cond:
            self._written = -1  # nothing more to hash
        self._stop()

    def _run(self) -> None:
        pos = 0
        try:
            while True:
                with self._cond:
                    while self._written == pos and not self._done:
                        self._cond.wait()
                    limit = self._written
                if limit <= pos:
                    return  # done and caught up (or aborted: limit -1)
                while pos < limit:
                    pos += self._hash(pos, min(CHUNK, limit - pos))
        except BaseException as exc:  # handed to the writing thread by finish()
            self._error = exc

    def _hash(self, pos: int, n: int) -> int:
        """Hash ``n`` bytes of the file from ``pos``; the bytes hashed."""
        if self._mapping:
            start = pos - pos % mmap.ALLOCATIONGRANULARITY
            try:
                with mmap.mmap(
                    self._file.fileno(), pos + n - start, access=mmap.ACCESS_READ, offset=start
                ) as mapped:
                    with memoryview(mapped) as view:
                        self._digest.update(view[pos - start :])
                return n
            except (OSError, ValueError):
                self._mapping = False  # read instead from now on
        buf = bytearray(n)
        self._file.seek(pos)
        got = self._file.readinto(buf)
        if not got:
            raise OSError(f"{self._file.name} is shorter than what was written to it")
        self._digest.update(memoryview(buf)[:got])
        return got


class _Copier:
    """Copies byte ranges of files into one open file at explicit offsets: in the kernel
    (``copy_file_range``) where the platform and the filesystems allow, else through a buffer."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.pos = 0
        self._kernel = hasattr(os, "copy_file_range")
        self._buf: bytearray | None = None
        self._source: tuple[Path, Any] | None = None

    def close(self) -> None:
        if self._source is not None:
            self._source[1].close()
            self._source = None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            self.out.seek(self.pos)
            n = self.out.write(view)
            self.pos += n
            view = view[n:]
        return len(data)

    def copy(self, path: Path, offset: int, count: int) -> int:
        """Copy up to ``count`` bytes of ``path`` from ``offset``; the bytes copied (0: its end)."""
        if self._source is None or self._source[0] != path:
            self.close()
            self._source = (path, open(path, "rb", buffering=0))  # noqa: SIM115 - closed by close()
        source = self._source[1]
        if self._kernel:
            try:
                n = os.copy_file_range(source.fileno(), self.out.fileno(), count, offset, self.pos)
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise
                self._kernel = False  # not here: through a buffer from now on
            else:
                self.pos += n
                return n
        if self._buf is None:
            self._buf = bytearray(CHUNK)
        source.seek(offset)
        n = source.readinto(memoryview(self._buf)[: min(count, CHUNK)])
        return self.write(memoryview(self._buf)[:n]) if n else 0


def _merged(pieces: Iterable[Piece]) -> list[Piece]:
    """``pieces`` with neighbouring ranges of the same file that follow each other made one."""
    out: list[Piece] = []
    for piece in pieces:
        last = out[-1] if out else None
        if (
            not isinstance(piece, bytes) and isinstance(last, tuple) and last[0] == piece[0]
            and last[2] is not None and piece[2] is not None and last[1] + last[2] == piece[1]
        ):  # fmt: skip
            out[-1] = (last[0], last[1], last[2] + piece[2])
        elif not (isinstance(piece, bytes) and not piece):
            out.append(piece)
    return out


def _write_pieces(dst: Path, pieces: Iterable[Piece], *, hashed: bool,
                  cancel: threading.Event | None) -> tuple[int, str | None]:  # fmt: skip
    """Write ``pieces`` into a new file ``dst``; (bytes written, hex sha256 of them if ``hashed``).

    A second thread hashes the file right behind the writes, and writeback to the disk is started
    every :data:`_WRITEBACK` bytes, so the final fsync finds little left to do.
    """
    with open(dst, "wb", buffering=0) as out:
        copier = _Copier(out)
        follower = _Follower(dst) if hashed else None
        try:
            told = flushed = 0
            for piece in _merged(pieces):
                for _ in _piece_steps(copier, piece):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    if follower is not None and copier.pos - told >= CHUNK:
                        follower.advance(copier.pos - told)  # in big steps: each one wakes a thread
                        told = copier.pos
                    if copier.pos - flushed >= _WRITEBACK:
                        _start_writeback(out.fileno(), flushed, copier.pos - flushed)
                        flushed = copier.pos
            if follower is not None:
                follower.advance(copier.pos - told)
        except BaseException:
            if follower is not None:
                follower.abort()
            raise
        finally:
            copier.close()
        return copier.pos, follower.finish() if follower is not None else None


def _piece_steps(copier: _Copier, piece: Piece) -> Iterator[int]:
    """Copy one piece in steps of at most :data:`STEP` bytes; yield the bytes of each step."""
    if isinstance(piece, bytes):
        yield copier.write(piece)
        return
    path, offset, length = piece
    while length is None or length > 0:
        n = copier.copy(path, offset, STEP if length is None else min(STEP, length))
        if not n:
            if length is None:
                return
            raise EOFError(f"{path} ends at byte {offset}, inside a range it should hold (truncated?)")
        offset += n
        length = None if length is None else length - n
        yield n


def read_range(path: str | os.PathLike[str], offset: int, length: int, buf: bytearray, *,
               cancel: threading.Event | None = None) -> Iterator[memoryview]:  # fmt: skip
    """The bytes ``[offset, offset + length)`` of ``path`` as views of ``buf``, one buffer-full at a
    time (each view is overwritten by the next: use it before asking for the next one).

    Raises:
        EOFError: the file ends before ``offset + length``.
        Cancelled: ``cancel`` was set.
    """
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        while length > 0:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            n = handle.readinto(view[: min(len(view), length)])
            if not n:
                raise EOFError(f"{path} ends at byte {offset}, inside a range it should hold (truncated?)")
            offset += n
            length -= n
            yield view[:n]


@contextlib.contextmanager
def overlapped_imports(interval: float = _SWITCH_INTERVAL) -> Iterator[None]:
    """For a block in which the main thread imports (torch, transformers) while worker threads copy
    and hash: hand the GIL over every ``interval`` seconds, and pause the cyclic garbage collector.

    A worker needs the GIL for a few bytecodes per chunk and waits up to one switch interval (5 ms
    by default) for it each time, about the time it takes to hash a chunk. Imports create many
    objects and so trigger many collections that find almost nothing (about a tenth of their CPU
    time). Both are restored after the block.
    """
    import gc

    before, collecting = sys.getswitchinterval(), gc.isenabled()
    sys.setswitchinterval(min(before, interval))
    gc.disable()
    try:
        yield
    finally:
        sys.setswitchinterval(before)
        if collecting:
            gc.enable()


def copy_hashing(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                 cancel: threading.Event | None = None) -> str:  # fmt: skip
    """Copy ``src`` to ``dst`` (in the kernel where possible); the hex sha256 of the bytes written.

    Raises:
        OSError: reading or writing failed (``dst`` is then incomplete: the caller removes it).
        Cancelled: ``cancel`` was set before the copy finished.
    """
    digest = _write_pieces(Path(dst), [(Path(src), 0, None)], hashed=True, cancel=cancel)[1]
    assert digest is not None
    return digest


def write_hashing(dst: str | os.PathLike[str], head: bytes, ranges: Iterable[tuple[Path, int, int]], *,
                  cancel: threading.Event | None = None) -> str:  # fmt: skip
    """Write ``head`` then the byte ranges ``(file, offset, length)`` of other files into ``dst``;
    the hex sha256 of ``dst``'s bytes.

    Raises:
        EOFError: a file ends inside one of its ranges (the message names the file).
        OSError, Cancelled: as :func:`copy_hashing`.
    """
    pieces: list[Piece] = [head, *((Path(p), offset, length) for p, offset, length in ranges)]
    digest = _write_pieces(Path(dst), pieces, hashed=True, cancel=cancel)[1]
    assert digest is not None
    return digest


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
              cancel: threading.Event | None = None) -> int:  # fmt: skip
    """Copy ``src`` to ``dst`` without hashing (its digest is known already); the bytes copied."""
    return _write_pieces(Path(dst), [(Path(src), 0, None)], hashed=False, cancel=cancel)[0]


def hash_stable(path: str | os.PathLike[str], *, cancel: threading.Event | None = None) -> str | None:
    """Hex sha256 of a file that was not changed while it was read (same inode, size and mtime
    before and after); None if it was, or cannot be read."""
    before = file_signature(path)
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buf):
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                digest.update(view[:n])
    except OSError:
        return None
    return digest.hexdigest() if before is not None and file_signature(path) == before else None


class BackgroundHasher:
    """sha256 of files on a worker thread while the caller goes on (importing, copying).

    A digest is handed out only when the file's identity, size and mtime are still what they were
    before it was read, so a file changed meanwhile is hashed again by the caller.

    Example:
        >>> with BackgroundHasher() as hasher:
        ...     hasher.submit(src / "model.safetensors")
        ...     shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
        ...     digest = hasher.digest(src / "model.safetensors")  # None: hash it yourself
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vhctl-sha256")
        self._cancel = threading.Event()
        self._jobs: dict[Path, tuple[Signature, Any]] = {}

    def __enter__(self) -> BackgroundHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, path: str | os.PathLike[str]) -> None:
        """Start hashing ``path`` (a file that is not there or already queued is ignored)."""
        key = Path(path).absolute()
        signature = file_signature(key)
        if key in self._jobs or signature is None:
            return
        self._jobs[key] = (signature, self._pool.submit(self._hash, key))

    def digest(self, path: str | os.PathLike[str]) -> str | None:
        """The hex sha256 of ``path`` if it was submitted and has not changed since; else None."""
        job = self._jobs.get(Path(path).absolute())
        if job is None:
            return None
        signature, future = job
        result = future.result()
        return result if result is not None and file_signature(Path(path).absolute()) == signature else None

    def close(self) -> None:
        """Stop after the chunk in progress; digests not asked for are dropped."""
        self._cancel.set()
        self._pool.shutdown(wait=True)

    def _hash(self, path: Path) -> str | None:
        try:
            return hash_stable(path, cancel=self._cancel)
        except Cancelled:
            return None
