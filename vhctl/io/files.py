"""File helpers: streaming sha256, atomic output folders, safe relative paths."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from vhctl.constants import OLD_PREFIX, TMP_PREFIX
from vhctl.errors import DestinationExistsError, UsageError, VhctlError

_CHUNK = 8 * 1024 * 1024


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so memory stays flat for multi-GB shards."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_relpath(rel: str, *, what: str = "path") -> str:
    """Return ``rel`` normalised with '/' if it stays inside its folder, else raise.

    Manifest paths and adapter names come from files a user may have been handed: they must
    never point outside the checkpoint (``..``, absolute paths, drive letters, backslashes).
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise VhctlError(f"invalid {what} {rel!r}: it must be a non-empty relative path")
    if rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":") or "\\" in rel:
        raise VhctlError(f"invalid {what} {rel!r}: absolute paths are not allowed in a checkpoint")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise VhctlError(f"invalid {what} {rel!r}: it must stay inside the checkpoint folder")
    return "/".join(parts)


def _sibling(dest: Path, prefix: str) -> Path:
    return dest.parent / f"{prefix}{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def clean_stale_siblings(dest: Path) -> None:
    """Remove leftovers of killed runs for ``dest`` (temporary and half-replaced folders).

    A leftover whose writer process still runs is kept.
    """
    parent = dest.parent
    if not parent.is_dir():
        return
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for entry in parent.glob(f"{prefix}{dest.name}-*"):
            pid_part = entry.name[len(prefix) + len(dest.name) + 1 :].split("-", 1)[0]
            if pid_part.isdigit() and int(pid_part) != os.getpid() and _alive(int(pid_part)):
                continue
            if prefix == OLD_PREFIX and not dest.exists():
                # A --force run died between moving the old folder aside and moving the new
                # one in: the old checkpoint is the user's data, put it back.
                with contextlib.suppress(OSError):
                    entry.rename(dest)
                    continue
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_output_dir(dest: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``dest``; move it into place only if the block succeeds.

    The old folder (with ``force``) is replaced only once the new one is complete, and it survives
    any failure before that. On error the temporary folder is removed.
    """
    dest = Path(dest).absolute()
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--out {dest} is a file, not a folder", hint="choose a folder path")
    if dest.exists() and not force:
        raise DestinationExistsError(
            f"{dest} already exists", hint="pass --force to replace it, or choose another --out"
        )
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VhctlError(f"cannot create {parent}: {exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK):
        raise VhctlError(f"no write permission in {parent}", hint="choose another --out")
    clean_stale_siblings(dest)
    tmp = _sibling(dest, TMP_PREFIX)
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            old = _sibling(dest, OLD_PREFIX)
            dest.rename(old)
            try:
                tmp.rename(dest)
            except BaseException:
                old.rename(dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def link_or_copy(src: Path, dst: Path, *, link: bool = False) -> None:
    """Copy ``src`` to ``dst`` (hard-link it when ``link`` and the filesystem allows)."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)
