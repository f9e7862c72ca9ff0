"""File helpers: atomic output folders, safe relative paths, modes like ``cp``.

``sha256_file`` and ``BackgroundHasher`` live in :mod:`vhctl.io.hashing` and are importable from here too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import re
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from vhctl.constants import OLD_PREFIX, TMP_PREFIX
from vhctl.errors import DestinationExistsError, NotAModelError, SourceNotFoundError, UsageError, VhctlError
from vhctl.io.hashing import BackgroundHasher, sha256_file

__all__ = [
    "BackgroundHasher",
    "atomic_output_dir",
    "clean_stale_siblings",
    "current_umask",
    "existing_folder",
    "fsync_tree",
    "link_or_copy",
    "link_tree",
    "safe_relpath",
    "sha256_file",
    "share_like_cp",
    "temp_sibling",
    "write_text_atomic",
]


def existing_folder(
    path: str | os.PathLike[str], *, hint: str = "pass the folder of a vhctl checkpoint"
) -> Path:
    """``path`` as a Path if it is a folder; otherwise the one clear error for a missing path or a file."""
    root = Path(path)
    if not root.exists():
        raise SourceNotFoundError(f"{root} does not exist", hint=hint)
    if not root.is_dir():
        raise NotAModelError(
            f"{root} is a file, not a checkpoint folder", hint="pass the checkpoint's folder"
        )
    return root


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


def temp_sibling(dest: Path) -> Path:
    """A unique temporary name next to ``dest`` that :func:`clean_stale_siblings` recognises."""
    return _sibling(Path(dest), TMP_PREFIX)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``dest`` through a temporary sibling renamed into place: never half a file."""
    path = Path(dest)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _stale_pid(entry: Path, prefix: str, dest: Path) -> int | None:
    """The writer pid in a leftover's name, or None when ``entry`` is not a leftover of ``dest``.

    The name must be exactly ``<prefix><dest name>-<pid>-<8 hex>``: a glob alone would also match
    the leftovers of a sibling destination such as ``ck-2`` when cleaning for ``ck``.
    """
    match = re.fullmatch(re.escape(prefix + dest.name) + r"-(\d+)-[0-9a-f]{8}", entry.name)
    return int(match.group(1)) if match else None


def clean_stale_siblings(dest: Path) -> None:
    """Remove leftovers of killed runs for ``dest`` (temporary and half-replaced folders).

    A leftover whose writer process still runs is kept. A half-replaced old folder is put back
    when ``dest`` is missing (a run died between moving it aside and moving the new one in).
    """
    parent = dest.parent
    if not parent.is_dir():
        return
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for entry in sorted(parent.glob(f"{glob.escape(prefix + dest.name)}-*")):
            pid = _stale_pid(entry, prefix, dest)
            if pid is None or (pid != os.getpid() and _alive(pid)):
                continue
            if prefix == OLD_PREFIX and not dest.exists():
                with contextlib.suppress(OSError):
                    entry.rename(dest)
                    continue
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def current_umask() -> int:
    """The process's umask, read without changing it where the platform allows (``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (only this thread creates files meanwhile)
    os.umask(mask)
    return mask


def share_like_cp(root: Path, files: Iterable[str] | None = None) -> None:
    """Give what vhctl wrote under ``root`` the modes ``cp`` would: files ``0666 & ~umask``, folders
    ``0777 & ~umask``.

    safetensors creates its files owner-only (0600), so a checkpoint written on a shared cluster
    would be unreadable to teammates while every other file is readable. ``files`` (relative paths)
    limits it to those files and their folders (a library save into an existing folder); by default
    the whole tree, which vhctl created. Hard-linked files are left alone: they are the user's own
    files (``wrap --link``), not copies vhctl made.
    """
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if files is None:
        os.chmod(root, dir_mode)
        paths = []
        for dirpath, dirnames, filenames in os.walk(root):
            paths += [Path(dirpath, name) for name in filenames]
            for name in dirnames:
                if not os.path.islink(os.path.join(dirpath, name)):
                    os.chmod(os.path.join(dirpath, name), dir_mode)
    else:
        paths = [root / rel for rel in files]
        for folder in {path.parent for path in paths} - {root}:
            if folder.is_dir() and not folder.is_symlink():
                os.chmod(folder, dir_mode)
    for path in paths:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) != file_mode:
            os.chmod(path, file_mode)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so a rename publishes complete files
    even across a power cut (a SIGKILL alone cannot lose written data)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a folder; the files are flushed already
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(dest: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``dest``; move it into place only if the block succeeds.

    The old folder (with ``force``) is replaced only once the new one is complete, and it survives
    any failure before that: on Linux the two folders are swapped in one atomic step, elsewhere the
    old one is moved aside first and put back by the next run if the process dies in between. On
    error the temporary folder is removed; leftovers of killed runs are removed by the next run.
    """
    dest = Path(dest).absolute()
    # First: a killed --force run may have left the old folder aside; it is the user's data.
    clean_stale_siblings(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--out {dest} is a file, not a folder", hint="choose a folder path")
    if dest.exists() and not force:
        raise DestinationExistsError(
            f"{dest} already exists", hint="pass --force to replace it, or choose another --out"
        )
    parent = dest.parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VhctlError(
            f"cannot create {parent}: {exc.strerror or exc}", hint="choose another --out"
        ) from exc
    if not os.access(parent, os.W_OK):
        _remove_empty(created)
        raise VhctlError(f"no write permission in {parent}", hint="choose another --out")
    tmp = _sibling(dest, TMP_PREFIX)
    try:
        tmp.mkdir()
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield tmp
        share_like_cp(tmp)
        fsync_tree(tmp)
        if dest.exists():
            if _exchange(tmp, dest):
                # ``tmp`` now holds the old checkpoint; the next run removes it if we die here.
                _fsync_dir(parent)
                _remove(tmp)
                return
            old = _sibling(dest, OLD_PREFIX)
            dest.rename(old)
            try:
                tmp.rename(dest)
            except BaseException:
                old.rename(dest)
                raise
            _fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
            _fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if _is_disk_full(exc):
            raise VhctlError(
                f"no space left on the device while writing {dest}; nothing was written",
                hint="free some space or choose another --out",
            ) from exc
        raise


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as safetensors reports it (``SafetensorError: ... (os error 28)``)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc) if type(exc).__name__ == "SafetensorError" else ""
    return f"os error {errno.ENOSPC})" in text or f"os error {errno.EDQUOT})" in text


def _remove_empty(folders: list[Path]) -> None:
    """Remove the parent folders a failed run created (deepest first), if still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def link_tree(src: Path, dst: Path, *, skip: Callable[[str], bool] | None = None) -> None:
    """Recreate ``src`` under ``dst`` with hard links (copies where linking fails).

    Used to rebuild a checkpoint next to itself cheaply, change the copy and swap it in. Leftovers
    of killed runs (``.vhctl-*``) and paths for which ``skip(relpath)`` is true are left out;
    symlinks are recreated as symlinks.
    """
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel_dir = here.relative_to(src)
        kept = []
        for name in sorted(dirnames):
            rel = (rel_dir / name).as_posix()
            if name.startswith(".vhctl-") or (skip is not None and skip(rel)):
                continue
            if (here / name).is_symlink():
                os.symlink(os.readlink(here / name), dst / rel)
                continue
            (dst / rel).mkdir()
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if name.startswith(".vhctl-") or (skip is not None and skip(rel)):
                continue
            if (here / name).is_symlink():
                os.symlink(os.readlink(here / name), dst / rel)
            else:
                link_or_copy(here / name, dst / rel, link=True)


def link_or_copy(src: Path, dst: Path, *, link: bool = False) -> None:
    """Copy ``src`` to ``dst`` (hard-link it when ``link`` and the filesystem allows)."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)
