"""Digests the Hugging Face cache already holds: an LFS file's blob is named by its sha256.

A snapshot in the cache (``models--org--name/snapshots/<commit>/``) holds symlinks into the repo's
``blobs/``; the blob of a file stored with Git LFS (every weight file) is named by the sha256 of
its content (its ETag on the hub). With Xet, huggingface_hub keeps the bytes once in a cache-wide
store and the repo's ``blobs/<sha256>`` is itself a link to them; the name is what counts. Reading a
multi-GB blob again only to compute its name is what this saves. ``vhctl validate`` still reads
and checks every byte of a checkpoint, so a blob whose content no longer matches its name is
caught there.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

__all__ = ["cached_blob_digest"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def cached_blob_digest(path: str | os.PathLike[str], expected_size: int) -> str | None:
    """The sha256 that names the cache blob ``path`` links to, or None when it cannot be trusted.

    Trusted only when ``path`` is a symlink to ``<repo>/blobs/<64 hex digits>`` of the same cache
    repo as the snapshot holding ``path``, and the bytes behind that entry (a regular file: the
    entry itself, or what it links to in huggingface_hub's shared Xet store) are ``expected_size``
    long; a blob cut short or grown is read and hashed instead.

    Args:
        path: a file in a snapshot folder of the cache (or anywhere: then None).
        expected_size: the size the file must have (for safetensors: what its header describes).
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
    return entry.name
