"""Write a base model's files into a checkpoint: copied (or hard-linked) byte for byte where they can be.

Weights are deserialised only when they must change: a file that also holds a TRL head, a dtype
conversion, or pickle-only weights (converted to safetensors). Files copied verbatim are copied
and hashed in one read, on worker threads (:class:`~vhctl.io.transfer.FileTransfers`); a file
from the Hugging Face cache whose blob is named by its sha256 is not hashed at all (its digest is
recorded as taken from the blob's name), unless ``verify`` asks for the bytes to be hashed and
checked against that name.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhctl.checkpoint.config import auto_class_for, quiet_transformers
from vhctl.checkpoint.tensors import read_header, weight_files
from vhctl.constants import SAFE_WEIGHTS_INDEX_NAME, V_HEAD_PREFIX
from vhctl.errors import VhctlError
from vhctl.io.files import atomic_output_dir
from vhctl.io.hf_cache import cached_blob
from vhctl.io.transfer import FileTransfers

if TYPE_CHECKING:
    import torch

__all__ = [
    "KnownDigests",
    "convert_pickle_base",
    "copy_safetensors_base",
    "open_output_early",
    "start_verbatim_copies",
    "strip_head_from_safetensors",
]


@dataclass
class KnownDigests:
    """The sha256 of base files copied (or linked) verbatim, and where each one came from."""

    sha256: dict[str, str] = field(default_factory=dict)  # relative path -> hex digest
    # relative path -> the cache blob whose name was taken as the digest (its bytes were not read)
    from_blob: dict[str, Path] = field(default_factory=dict)


def open_output_early(
    stack: contextlib.ExitStack[Any], out: Path, *, force: bool
) -> tuple[Path | None, Exception | None]:
    """The temporary output folder (see :func:`~vhctl.io.files.atomic_output_dir`), opened before the
    source is checked so that weights can be written while transformers is imported.

    Returns:
        The folder, or None and the refusal (the folder exists, is a file, cannot be written) for
        the caller to raise once the source's own errors are known, which come first as before.
    """
    try:
        return stack.enter_context(atomic_output_dir(out, force=force)), None
    except Exception as exc:  # raised by the caller after the source's checks
        return None, exc


def strip_head_from_safetensors(src: Path, dst: Path, dtype: torch.dtype | None) -> None:
    """Rewrite one weight file without its ``v_head`` keys (and cast floats to ``dtype`` if given)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(src), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        for key in handle.keys():
            if "v_head." in key:
                continue
            tensor = handle.get_tensor(key)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            tensors[key] = tensor
    save_file(tensors, str(dst), metadata={**metadata, "format": "pt"})


def _header_size(path: Path) -> tuple[int, bool] | None:
    """(the size the safetensors header describes, whether it holds ``v_head`` keys); None if corrupt."""
    try:
        header = read_header(path)
    except VhctlError:
        return None
    size = max((info.end for info in header.tensors.values()), default=header.data_start)
    return size, any(V_HEAD_PREFIX in key for key in header.tensors)


def _start_copy(src: Path, dst: Path, rel: str, transfers: FileTransfers, *, link: bool,
                verify: bool) -> Path | None:  # fmt: skip
    """Start one copy; the cache blob whose name is taken as its digest (None: its bytes are hashed)."""
    described = _header_size(src / rel)
    blob = cached_blob(src / rel, described[0]) if described is not None else None
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    if verify:
        transfers.copy(src / rel, dst / rel, link=link, verify=blob)
        return None
    transfers.copy(src / rel, dst / rel, link=link, digest=None if blob is None else blob.name)
    return blob


def start_verbatim_copies(
    src: Path, dst: Path, files: list[str], transfers: FileTransfers, *, link: bool, verify: bool = False
) -> dict[str, Path]:
    """Start copying those of ``files`` (relative to ``src``) that no plan would rewrite: readable
    safetensors files without ``v_head`` keys. :func:`copy_safetensors_base` takes them over.

    Returns:
        The files whose digest is taken from their cache blob's name (relative path -> blob).
    """
    blobs: dict[str, Path] = {}
    for rel in files:
        described = _header_size(src / rel) if (src / rel).is_file() else None
        if described is not None and not described[1]:
            blob = _start_copy(src, dst, rel, transfers, link=link, verify=verify)
            if blob is not None:
                blobs[rel] = blob
    return blobs


def copy_safetensors_base(
    src: Path, dst: Path, *, head_files: list[str], dtype: torch.dtype | None, link: bool,
    transfers: FileTransfers | None = None, started: dict[str, Path] | None = None, verify: bool = False,
) -> KnownDigests:  # fmt: skip
    """Copy (or link) the base's weight files; rewrite those holding ``v_head`` keys or needing ``dtype``.

    Args:
        transfers: copies already started (:func:`start_verbatim_copies`); files to rewrite are taken
            back from it. Default: a pool of its own.
        started: what :func:`start_verbatim_copies` returned for the copies it started.
        verify: hash the bytes of files from the Hugging Face cache too, and refuse a blob whose
            bytes do not hash to its name (:class:`~vhctl.errors.IntegrityError`).

    Returns:
        The sha256 of the files copied or linked verbatim (from the bytes written, or from the name
        of the cache blob they came from, which :attr:`KnownDigests.from_blob` lists); a file whose
        digest could not be told for sure is left out (hash it later).
    """
    blobs = dict(started or {})
    with contextlib.ExitStack() as stack:
        if transfers is None:
            transfers = stack.enter_context(FileTransfers())
        rels = weight_files(src)
        verbatim = [rel for rel in rels if rel not in head_files and dtype is None]
        for rel in verbatim:
            if not transfers.started(dst / rel):
                blob = _start_copy(src, dst, rel, transfers, link=link, verify=verify)
                if blob is not None:
                    blobs[rel] = blob
        for rel in rels:
            if rel not in verbatim:
                transfers.discard(dst / rel)
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                strip_head_from_safetensors(src / rel, dst / rel, dtype)
        digests = {rel: transfers.digest(dst / rel) for rel in verbatim}
    index = src / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if "v_head." not in k}
        if dtype is not None or head_files:
            total = sum((dst / rel).stat().st_size for rel in rels)
            data.setdefault("metadata", {})["total_size"] = total
        (dst / SAFE_WEIGHTS_INDEX_NAME).write_text(
            json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    known = {rel: digest for rel, digest in digests.items() if digest is not None}
    return KnownDigests(known, {rel: blob for rel, blob in blobs.items() if rel in known})


def convert_pickle_base(src: Path, dst: Path, architecture: str, dtype: torch.dtype | None) -> list[str]:
    """Pickle-only weights (allowed by the caller): load with transformers and write safetensors."""
    with quiet_transformers():
        model = auto_class_for(architecture).from_pretrained(
            str(src), use_safetensors=False, trust_remote_code=False, dtype=dtype or "auto"
        )
    model.save_pretrained(str(dst))
    return [p.name for p in dst.iterdir() if p.name.startswith("model")]
