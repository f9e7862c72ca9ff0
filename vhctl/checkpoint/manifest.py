"""``vhctl.json``: what a checkpoint holds, with the size and sha256 of every file.

The manifest is a plain dataclass, validated on read, written with sorted keys so that two
writes of the same checkpoint are byte-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vhctl._version import __version__
from vhctl.constants import (
    ARCH_CAUSAL,
    ARCH_SEQ2SEQ,
    FORMAT_NAME,
    FORMAT_VERSION,
    KIND_POLICY,
    KIND_REFERENCE,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
)
from vhctl.errors import ManifestError, VhctlError
from vhctl.io.files import clean_stale_siblings, safe_relpath, sha256_file, temp_sibling

__all__ = [
    "FROM_CACHE_BLOB",
    "AdapterInfo",
    "FileEntry",
    "Manifest",
    "ReferenceInfo",
    "ValueHeadInfo",
    "finish_manifest",
    "iter_checkpoint_files",
    "manifest_type_errors",
]

_KINDS = (KIND_POLICY, KIND_REFERENCE)
# ``extra`` key: files whose sha256 was taken from the name of the Hugging Face cache blob they were
# copied from, without reading them (relative path -> the blob's path); every other digest is that
# of the bytes written. In ``extra`` so that a vhctl that does not know it still reads the manifest.
FROM_CACHE_BLOB = "sha256_from_cache_blob"
_ARCHS = (ARCH_CAUSAL, ARCH_SEQ2SEQ)


@dataclass
class FileEntry:
    size: int
    sha256: str


@dataclass
class ValueHeadInfo:
    """How the value head was made; ``init`` is ``random``, ``normal`` or ``loaded``."""

    file: str
    hidden_size: int
    dtype: str = "float32"
    init: str = "random"
    std: float | None = None
    dropout: float = 0.1
    seed: int | None = None


@dataclass
class ReferenceInfo:
    """For ``kind == "reference"``: where the policy is and which of its tensors are shared."""

    policy: str | None = None
    num_shared_layers: int | None = None
    pattern: str | None = None
    shared_tensors: list[str] = field(default_factory=list)
    shared_sha256: str | None = None


@dataclass
class AdapterInfo:
    path: str
    peft_type: str | None = None
    task_type: str | None = None
    base_model: str | None = None
    hidden_size: int | None = None
    role: str = "reward"


@dataclass
class Manifest:
    kind: str
    architecture: str
    model_type: str
    value_head: ValueHeadInfo
    base_model: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    frozen: dict[str, Any] | None = None
    reference: ReferenceInfo | None = None
    references: list[str] = field(default_factory=list)
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    vhctl_version: str = __version__

    def __post_init__(self) -> None:
        if self.format != FORMAT_NAME:
            raise ManifestError(f"manifest format is {self.format!r}, expected {FORMAT_NAME!r}")
        if not isinstance(self.format_version, int) or self.format_version > FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version {self.format_version!r} is newer than this vhctl understands "
                f"({FORMAT_VERSION})",
                hint="upgrade vhctl",
            )
        if self.kind not in _KINDS:
            raise ManifestError(f"manifest kind {self.kind!r} is not one of {', '.join(_KINDS)}")
        if self.architecture not in _ARCHS:
            raise ManifestError(
                f"manifest architecture {self.architecture!r} is not one of {', '.join(_ARCHS)}"
            )
        try:
            for name in self.files:
                safe_relpath(name, what="manifest file path")
            for name, adapter in self.adapters.items():
                safe_relpath(name, what="adapter name")
                safe_relpath(adapter.path, what="adapter path")
        except VhctlError as exc:
            raise ManifestError(exc.message, hint=exc.hint) from exc

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        try:
            d = dict(data)
            vh = d.pop("value_head")
            if not isinstance(vh, dict):
                raise TypeError("value_head must be an object")
            d["value_head"] = ValueHeadInfo(**vh)
            files = d.pop("files", {}) or {}
            if not isinstance(files, dict):
                raise TypeError("files must be an object")
            d["files"] = {k: FileEntry(**v) for k, v in files.items()}
            for k, v in d["files"].items():
                if not isinstance(v.size, int) or not isinstance(v.sha256, str) or len(v.sha256) != 64:
                    raise TypeError(f"files[{k!r}] needs an integer size and a 64-character sha256")
            ref = d.pop("reference", None)
            d["reference"] = ReferenceInfo(**ref) if ref is not None else None
            adapters = d.pop("adapters", {}) or {}
            if not isinstance(adapters, dict):
                raise TypeError("adapters must be an object")
            d["adapters"] = {k: AdapterInfo(**v) for k, v in adapters.items()}
            for key in ("kind", "architecture", "model_type", "format"):
                if key in d and not isinstance(d[key], str):
                    raise TypeError(f"{key} must be a string")
            return cls(**d)
        except ManifestError:
            raise
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise ManifestError(f"manifest does not follow the vhctl format: {exc}") from exc

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(
                f"{path} not found: {folder} is not a vhctl checkpoint",
                hint="make one with 'vhctl wrap MODEL --out DIR'",
            )
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``vhctl.json`` atomically: a unique temporary file, flushed, then renamed over the old one.

        Leftovers of killed writers (``.vhctl-tmp-vhctl.json-<pid>-*``) are removed first.
        """
        path = Path(folder) / MANIFEST_NAME
        clean_stale_siblings(path)
        tmp = temp_sibling(path)
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    # -- files ---------------------------------------------------------------------------
    def refresh_files(self, folder: str | os.PathLike[str], known: Mapping[str, str] | None = None,
                      from_blob: Mapping[str, os.PathLike[str] | str] | None = None) -> None:  # fmt: skip
        """Record size and sha256 of every file under ``folder`` except the manifest itself.

        Nested reference checkpoints (``ref/`` with their own manifest) are left to their own
        manifest. ``known`` gives digests the caller already has (files copied verbatim from a
        source hashed while they were copied); the others are read and hashed here. ``from_blob``
        names the files among ``known`` whose digest is a Hugging Face cache blob's name, not read
        (recorded under ``extra["sha256_from_cache_blob"]``).
        """
        root = Path(folder)
        known = known or {}
        from_blob = from_blob or {}
        self.files = {}
        blobs: dict[str, str] = {}
        for rel in iter_checkpoint_files(root):
            p = root / rel
            sha = known.get(rel)
            if sha is None:
                sha = sha256_file(p)
            elif rel in from_blob:
                blobs[rel] = str(from_blob[rel])
            self.files[rel] = FileEntry(size=p.stat().st_size, sha256=sha)
        if isinstance(self.extra, dict):
            self.extra = {k: v for k, v in self.extra.items() if k != FROM_CACHE_BLOB}
            if blobs:
                self.extra[FROM_CACHE_BLOB] = blobs

    def cache_blob_of(self, rel: str) -> str | None:
        """The Hugging Face cache blob whose name was taken as ``rel``'s sha256 (None: it was hashed)."""
        blobs = self.extra.get(FROM_CACHE_BLOB) if isinstance(self.extra, dict) else None
        blob = blobs.get(rel) if isinstance(blobs, dict) else None
        return blob if isinstance(blob, str) else None


def finish_manifest(folder: Path, manifest: Manifest, known: Mapping[str, str] | None = None,
                    from_blob: Mapping[str, os.PathLike[str] | str] | None = None) -> Manifest:  # fmt: skip
    """Hash every file and write ``vhctl.json`` last, so a checkpoint with a manifest is complete.

    ``known``, ``from_blob``: digests of files the caller has already, and which of them are cache
    blob names (see :meth:`Manifest.refresh_files`).
    """
    manifest.refresh_files(folder, known, from_blob)
    manifest.write(folder)
    return manifest


def _type_ok(value: Any, types: tuple[type, ...], *, optional: bool = False) -> bool:
    if value is None:
        return optional
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def manifest_type_errors(manifest: Manifest) -> list[str]:
    """Fields of a parsed manifest that have the wrong type or an unsafe path (empty: well formed).

    ``Manifest`` checks the format, kind, architecture and paths when it is built; this covers the
    remaining fields, so that a hand-edited manifest is reported (``vhctl validate``, ``vhctl info``)
    instead of crashing a check that trusts them.

    Args:
        manifest: a manifest as read from ``vhctl.json``.

    Returns:
        One sentence per wrong field, in a fixed order.
    """
    out: list[str] = []
    _value_head_errors(manifest.value_head, out)
    _need(out, isinstance(manifest.base_model, dict), "base_model must be an object {source, revision}")
    if isinstance(manifest.base_model, dict):
        for key in ("source", "revision"):
            _need(
                out,
                _type_ok(manifest.base_model.get(key), (str,), optional=True),
                f"base_model.{key} must be a string or null",
            )
    _need(out, isinstance(manifest.extra, dict), "extra must be an object")
    if isinstance(manifest.extra, dict) and FROM_CACHE_BLOB in manifest.extra:
        blobs = manifest.extra[FROM_CACHE_BLOB]
        _need(
            out,
            isinstance(blobs, dict) and all(isinstance(v, str) for v in blobs.values()),
            f"extra.{FROM_CACHE_BLOB} must map file paths to blob paths",
        )
    _need(out, isinstance(manifest.vhctl_version, str), "vhctl_version must be a string")
    _need(
        out,
        manifest.frozen is None or isinstance(manifest.frozen, dict),
        "frozen must be an object {num_shared_layers, pattern} or null",
    )
    _need(
        out,
        isinstance(manifest.references, list) and all(isinstance(r, str) and r for r in manifest.references),
        "references must be a list of relative paths",
    )
    for name, ad in manifest.adapters.items():
        for key in ("peft_type", "task_type", "base_model"):
            _need(
                out,
                _type_ok(getattr(ad, key), (str,), optional=True),
                f"adapters.{name}.{key} must be a string or null",
            )
        _need(
            out,
            _type_ok(ad.hidden_size, (int,), optional=True),
            f"adapters.{name}.hidden_size must be an integer or null",
        )
        _need(out, _type_ok(ad.role, (str,), optional=True), f"adapters.{name}.role must be a string")
    if manifest.kind == KIND_REFERENCE and manifest.reference is None:
        out.append("kind is 'reference' but there is no 'reference' section")
    if manifest.reference is not None:
        _reference_errors(manifest.reference, out)
    return out


def _need(out: list[str], ok: bool, what: str) -> None:
    if not ok:
        out.append(what)


def _value_head_errors(vh: ValueHeadInfo, out: list[str]) -> None:
    _need(out, _type_ok(vh.file, (str,)), "value_head.file must be a file name")
    if isinstance(vh.file, str):
        try:
            safe_relpath(vh.file, what="value_head.file")
        except VhctlError as exc:
            out.append(str(exc))
    _need(
        out,
        _type_ok(vh.hidden_size, (int,)) and vh.hidden_size > 0,
        f"value_head.hidden_size is {vh.hidden_size!r}, expected a positive integer",
    )
    _need(out, _type_ok(vh.dtype, (str,)), "value_head.dtype must be a dtype name such as 'float32'")
    _need(out, _type_ok(vh.init, (str,), optional=True), "value_head.init must be a string")
    _need(out, _type_ok(vh.std, (int, float), optional=True), "value_head.std must be a number or null")
    _need(
        out, _type_ok(vh.dropout, (int, float), optional=True), "value_head.dropout must be a number or null"
    )
    _need(out, _type_ok(vh.seed, (int,), optional=True), "value_head.seed must be an integer or null")


def _reference_errors(ref: ReferenceInfo, out: list[str]) -> None:
    _need(
        out,
        isinstance(ref.policy, str) and bool(ref.policy) and "\x00" not in ref.policy,
        "reference.policy must be the relative path of the policy folder",
    )
    _need(
        out,
        _type_ok(ref.num_shared_layers, (int,), optional=True),
        "reference.num_shared_layers must be an integer or null",
    )
    _need(out, _type_ok(ref.pattern, (str,), optional=True), "reference.pattern must be a string or null")
    _need(
        out,
        isinstance(ref.shared_tensors, list) and all(isinstance(n, str) for n in ref.shared_tensors),
        "reference.shared_tensors must be a list of tensor names",
    )
    _need(
        out,
        _type_ok(ref.shared_sha256, (str,), optional=True),
        "reference.shared_sha256 must be a hex string or null",
    )


def iter_checkpoint_files(root: Path) -> list[str]:
    """Relative paths of the files that belong to the checkpoint at ``root`` (sorted).

    Skips the manifest, temporary leftovers and any nested folder that is a checkpoint of its own.
    """
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith(".vhctl-") or (sub / MANIFEST_NAME).exists():
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if here == root and f in (MANIFEST_NAME, MODEL_CARD_NAME):
                continue
            if f.endswith(".tmp") or f.startswith(".vhctl-"):
                continue
            out.append((here / f).relative_to(root).as_posix())
    return sorted(out)
