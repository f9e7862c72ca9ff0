"""Digests the Hugging Face cache already holds: an LFS file's blob is named by its sha256.

A snapshot in the cache (``models--org--name/snapshots/<commit>/``) holds symlinks into the repo's
``blobs/``; the blob of a file stored with Git LFS (every weight file) is named by the sha256 of
its content (its ETag on the hub). With Xet, huggingface_hub keeps the bytes once in a cache-wide
store and the repo's ``blobs/<sha256>`` is itself a link to them; the name is what counts. Reading a
multi-GB blob again only to compute its name is what this saves, at a price: a blob whose bytes
were damaged on disk keeps its name. So a digest taken from a name is recorded as such in the
manifest (``vhctl validate`` then names the blob when the bytes do not match), and ``wrap --verify``
hashes the bytes anyway and refuses a blob whose content is not its name
(:func:`corrupt_blob_error`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from vhctl.errors import IntegrityError

__all__ = ["cache_repo_id", "cached_blob", "cached_blob_digest", "corrupt_blob_error"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def cached_blob(path: str | os.PathLike[str], expected_size: int) -> Path | None:
    """The cache blob ``path`` links to, whose name is the sha256 of its bytes; None when its name
    cannot be trusted.

    Trusted only when ``path`` is a symlink to ``<repo>/blobs/<64 hex digits>`` of the same cache
    repo as the snapshot holding ``path``, and the bytes behind that entry (a regular file: the
    entry itself, or what it links to in huggingface_hub's shared Xet store) are ``expected_size``
    long; a blob cut short or grown is read and hashed instead.

    Args:
        path: a file in a snapshot folder of the cache (or anywhere: then None).
        expected_size: the size the file must have (for safetensors: what its header describes).

    Returns:
        ``<cache>/models--org--name/blobs/<sha256>`` (not resolved further), or None.
    """
    link = Path(path)
    try:
        if not link.is_symlink():
            return None
        folder = link.parent.resolve(strict=True)
        entry = Path(os.path.normpath(folder / os.readlink(link)))  # <repo>/blobs/<etag>
        st = os.stat(entry)  # the file that holds the bytes, through any further links
    except (OSError, RuntimeError):
        return None
    if not _SHA256.fullmatch(entry.name) or entry.parent.name != "blobs":
        return None  # not an LFS blob (a git file is named by its 40-digit sha1)
    if entry.parent.parent / "snapshots" not in folder.parents:
        return None  # a blob of another cache repo, or a symlink made by hand
    if not stat.S_ISREG(st.st_mode) or st.st_size != expected_size:
        return None
    return entry


def cached_blob_digest(path: str | os.PathLike[str], expected_size: int) -> str | None:
    """The sha256 that names the cache blob ``path`` links to, or None (see :func:`cached_blob`)."""
    blob = cached_blob(path, expected_size)
    return None if blob is None else blob.name


def cache_repo_id(blob: Path) -> str:
    """``org/name`` for a blob of ``<cache>/models--org--name/blobs/`` (the folder's name otherwise)."""
    folder = blob.parent.parent.name
    kind, _, rest = folder.partition("--")
    return rest.replace("--", "/") if kind in ("models", "datasets", "spaces") and rest else folder


def corrupt_blob_error(blob: Path, actual: str) -> IntegrityError:
    """The refusal for a cache blob whose bytes do not hash to its name."""
    cache = blob.parent.parent.parent
    return IntegrityError(
        f"the Hugging Face cache blob {blob} is corrupt: its bytes hash to {actual[:12]}..., its name "
        f"says {blob.name[:12]}... (cache {cache}); nothing was written",
        hint=f"delete that blob and download {cache_repo_id(blob)} again (hf download REPO --force-download)",
    )
