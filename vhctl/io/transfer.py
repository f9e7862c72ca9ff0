"""Copy (or hard-link) a model's files and sha256 them on worker threads, each byte read once.

``wrap`` starts copying the base weights before it imports transformers, and asks for their digests
when it writes the manifest; the files of a sharded model are copied and hashed in parallel, one
worker per core (sha256 of one stream uses one core). A file whose digest is known already (a
Hugging Face cache blob, named by its sha256) is copied by the kernel and not hashed at all.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vhctl.errors import IntegrityError
from vhctl.io.hashing import Cancelled, copy_file, copy_hashing, hash_stable, overlapped_imports
from vhctl.io.hf_cache import corrupt_blob_error

__all__ = ["FileTransfers", "usable_cores"]

_MAX_WORKERS = 8


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class _Job:
    future: Future[str | None]
    cancel: threading.Event


class FileTransfers:
    """Files copied (or linked) into place on worker threads, with the sha256 of what was written.

    Example:
        >>> with FileTransfers() as transfers:
        ...     transfers.copy(src / "model.safetensors", dst / "model.safetensors")
        ...     ...  # meanwhile: import, read configs
        ...     digest = transfers.digest(dst / "model.safetensors")
    """

    def __init__(self, workers: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=workers or min(_MAX_WORKERS, usable_cores()), thread_name_prefix="vhctl-copy"
        )
        self._jobs: dict[Path, _Job] = {}
        self._handoffs = contextlib.ExitStack()
        self._handoffs.enter_context(overlapped_imports())  # the caller imports while workers copy

    def __enter__(self) -> FileTransfers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def copy(self, src: Path, dst: Path, *, link: bool = False, digest: str | None = None,
             verify: Path | None = None) -> None:  # fmt: skip
        """Start putting ``src`` at ``dst``: a hard link when ``link`` and the filesystem allows, else
        a copy. ``digest``: the sha256 of ``src`` when known for sure (then nothing is hashed).
        ``verify``: a Hugging Face cache blob whose name the bytes written must hash to (they are
        hashed, and :meth:`digest` raises :class:`~vhctl.errors.IntegrityError` when they do not)."""
        key = Path(dst).absolute()
        if key in self._jobs:
            raise ValueError(f"{dst} is being written already")
        cancel = threading.Event()
        job = self._pool.submit(_transfer, Path(src), key, link, digest, verify, cancel)
        self._jobs[key] = _Job(job, cancel)

    def started(self, dst: Path) -> bool:
        """Whether a job writes ``dst``."""
        return Path(dst).absolute() in self._jobs

    def digest(self, dst: Path) -> str | None:
        """Wait for the job that writes ``dst``; the sha256 of its bytes, or None when it could not be
        told for sure (a linked file that changed while it was hashed). Raises what the job raised."""
        return self._jobs[Path(dst).absolute()].future.result()

    def discard(self, dst: Path) -> None:
        """Stop the job that writes ``dst`` (after its current chunk) and remove what it wrote."""
        job = self._jobs.pop(Path(dst).absolute(), None)
        if job is None:
            return
        job.cancel.set()
        if not job.future.cancel():
            try:
                job.future.result()
            except (Cancelled, OSError, EOFError, IntegrityError):
                pass
        Path(dst).unlink(missing_ok=True)

    def discard_all(self) -> None:
        """:meth:`discard` every job (the files will be written another way)."""
        for key in list(self._jobs):
            self.discard(key)

    def close(self) -> None:
        """Stop the jobs still running (their files are left to the caller's clean-up) and wait."""
        for job in self._jobs.values():
            job.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._handoffs.close()


def _transfer(src: Path, dst: Path, link: bool, digest: str | None, verify: Path | None,
              cancel: threading.Event) -> str | None:  # fmt: skip
    found = _put(src, dst, link, digest, cancel)
    if verify is not None and found is not None and found != verify.name:
        raise corrupt_blob_error(verify, found)
    return found


def _put(src: Path, dst: Path, link: bool, digest: str | None, cancel: threading.Event) -> str | None:
    if link:
        try:
            os.link(os.path.realpath(src), dst)  # the file itself: link() would link a symlink
        except OSError:
            pass  # another filesystem, or no hard links there: copy instead
        else:
            return digest if digest is not None else hash_stable(dst, cancel=cancel)
    if digest is not None:
        size = os.stat(src).st_size
        return digest if copy_file(src, dst, cancel=cancel) == size else None
    return copy_hashing(src, dst, cancel=cancel)
