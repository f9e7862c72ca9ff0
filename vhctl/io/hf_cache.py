"""Digests the Hugging Face cache already holds: an LFS file's blob is named by its sha256.

A snapshot in the cache (``models--org--name/snapshots/<commit>/``) holds symlinks into
``blobs/``; the blob of a file stored with Git LFS (every weight file) is named by the sha256 of
its content, which huggingface_hub checked against the hub when it downloaded it. Reading a
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
    """The sha256 that names the cache blob ``path`` leads to, or None when it cannot be trusted.

    Trusted only when ``path`` is a symlink that resolves to ``<repo>/blobs/<64 hex digits>`` of
    the same cache repo as the snapshot holding ``path``, and that blob is a regular file of
    ``expected_size`` bytes (a blob cut short or grown is read and hashed instead).

    Args:
        path: a file in a snapshot folder of the cache (or anywhere: then None).
        expected_size: the size the file must have (for safetensors: what its header describes).
    """
    link = Path(path)
    if not link.is_symlink():
        return None
    try:
        blob = link.resolve(strict=True)
        folder = link.parent.resolve(strict=True)
        st = os.lstat(blob)
    except (OSError, RuntimeError):
        return None
    if not _SHA256.fullmatch(blob.name) or blob.parent.name != "blobs":
        return None
    if blob.parent.parent / "snapshots" not in folder.parents:
        return None  # a blob of another cache repo, or a symlink made by hand
    if not stat.S_ISREG(st.st_mode) or st.st_size != expected_size:
        return None
    return blob.name
