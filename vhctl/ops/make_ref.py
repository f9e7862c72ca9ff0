"""``make-ref``: a frozen reference checkpoint that stores only what it does not share with its policy.

Works at the file level: tensors are copied as byte ranges from the policy's safetensors files, so
memory stays flat whatever the model size. Every byte of the policy's weights is read once: the
stored tensors are copied by the kernel and hashed from the new file as it is written (the manifest
does not read it again), while another thread hashes the shared ones for ``shared_sha256``. That
hash starts before transformers' modeling code is imported (which the layer split needs, and which
takes seconds), on the tensors the stored names alone suggest are shared; it is restarted if the
model's module order says otherwise, so the digest is always that of the true split.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vhctl.checkpoint.config import auto_class_for, load_config
from vhctl.checkpoint.manifest import Manifest, ReferenceInfo, finish_manifest
from vhctl.checkpoint.tensors import TensorInfo, tensor_index, tensors_sha256
from vhctl.checkpoint.tokenizer import copy_tokenizer_files
from vhctl.constants import (
    CONFIG_NAME,
    DEFAULT_REF_DIR,
    GENERATION_CONFIG_NAME,
    KIND_POLICY,
    KIND_REFERENCE,
    LAYER_PATTERNS,
    SAFE_WEIGHTS_NAME,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, SourceNotFoundError, UsageError
from vhctl.io.hashing import CHUNK, Cancelled, overlapped_imports, read_range, write_hashing
from vhctl.ops.base_files import copy_safetensors_base, open_output_early

__all__ = [
    "ReferenceResult",
    "make_reference",
    "model_parameter_names",
    "write_safetensors_subset",
]

_ALIGN = 8


@dataclass
class ReferenceResult:
    """What ``make-ref`` wrote: where, what it shares with its policy and what it stores."""

    out: Path
    policy: Path
    num_shared_layers: int | None
    pattern: str | None
    shared_tensors: int
    stored_tensors: int
    stored_bytes: int
    shared_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out), "policy": str(self.policy)}


def write_safetensors_subset(entries: list[tuple[str, Path, Any]], dst: Path, *,
                             cancel: threading.Event | None = None) -> tuple[int, str]:  # fmt: skip
    """Write a safetensors file from byte ranges of other files, reading each range once.

    ``entries`` are ``(name, file, TensorInfo)``; tensors are laid out in name order. ``cancel``
    stops the copy at its next step (raising :class:`~vhctl.io.hashing.Cancelled`).

    Returns:
        The bytes of tensor data, and the sha256 of the file written (hashed from what was written).
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    ordered = sorted(entries, key=lambda e: e[0])
    for name, _, info in ordered:
        header[name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % _ALIGN)
    ranges = [(Path(path), info.start, info.nbytes) for _, path, info in ordered]
    try:
        digest = write_hashing(dst, len(raw).to_bytes(8, "little") + raw, ranges, cancel=cancel)
    except EOFError as exc:
        short = next(((p, i) for _, p, i in ordered if Path(p).stat().st_size < i.end), None)
        if short is None:
            raise
        raise CheckpointError(f"{short[0]} ends inside tensor {short[1].name!r} (truncated?)") from exc
    return offset, digest


def _shared_digest(
    index: dict[str, tuple[Path, TensorInfo]], names: list[str], cancel: threading.Event
) -> str:
    """``shared_sha256`` (see :func:`vhctl.checkpoint.tensors.shared_tensors_sha256`) from the index
    at hand; stops at the next chunk once ``cancel`` is set."""
    buf = bytearray(CHUNK)

    def chunks(name: str) -> Iterator[memoryview]:
        path, info = index[name]
        try:
            yield from read_range(path, info.start, info.nbytes, buf, cancel=cancel)
        except EOFError as exc:
            raise CheckpointError(f"{path} ends inside tensor {info.name!r} (truncated?)") from exc

    return tensors_sha256((name, chunks(name)) for name in sorted(set(names)))


# Modules that come before the first layer in module order, besides those named "*embed*".
_BEFORE_LAYERS = frozenset({"wte", "wpe", "shared", "project_in", "project_out"})


def _before_layers(name: str, parent: str) -> bool:
    """Whether a parameter outside the layers looks like an embedding of the layers' model."""
    parts = name.split(".")
    if not (name.startswith(parent) or len(parts) == 2):
        return False  # e.g. a T5 decoder's embedding, after the encoder's layers
    return any(p in _BEFORE_LAYERS or ("embed" in p and p != "embed_out") for p in parts[:-1])


def _guess_shared(names: Iterable[str], num_shared_layers: int, pattern: str | None) -> list[str]:
    """The shared tensors as the stored names alone suggest (empty: no guess): those of layers
    0..N-1 of the first known layer pattern that matches, and the embeddings next to them.

    Only used to start hashing before the module order is known (a wrong guess costs time, never a
    wrong digest: the true split is checked against it).
    """
    names = list(names)
    for candidate in [pattern] if pattern is not None else LAYER_PATTERNS:
        head, _, tail = candidate.partition("{layer}")
        regex = re.compile(rf"(?:^|\.){re.escape(head)}(\d+){re.escape(tail)}\.")
        layer = {name: regex.search(name) for name in names}
        if any(layer.values()):
            parent = head.rstrip(".").rpartition(".")[0] + "."
            return sorted(
                name for name, found in layer.items()
                if (int(found.group(1)) < num_shared_layers if found else _before_layers(name, parent))
            )  # fmt: skip
    return []


class _ReferenceWeights:
    """The reference's weights and ``shared_sha256``, written and hashed on worker threads.

    Both start on a guess of the split (:func:`_guess_shared`) while transformers' modeling code is
    imported; :meth:`finish` keeps what matches the true split and redoes the rest.
    """

    def __init__(self, policy_dir: Path, index: dict[str, tuple[Path, TensorInfo]]) -> None:
        self._policy_dir, self._index = policy_dir, index
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vhctl-ref")
        self._shared: tuple[list[str], Future[str], threading.Event] | None = None
        self._stored: tuple[list[str], Future[tuple[int, str]], threading.Event] | None = None

    def __enter__(self) -> _ReferenceWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        for job in (self._shared, self._stored):
            if job is not None:
                job[2].set()  # stop at the next chunk (a no-op for a finished job)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def stored(self, shared: list[str]) -> list[tuple[str, Path, TensorInfo]]:
        """What a reference sharing ``shared`` stores: every other tensor."""
        skip = set(shared)
        return [(name, path, info) for name, (path, info) in self._index.items() if name not in skip]

    def start(self, tmp: Path, shared: list[str]) -> None:
        """Hash ``shared`` and write the rest into ``tmp`` (nothing new if those are running)."""
        shared = sorted(set(shared))
        if not shared:
            return
        if self._shared is None or self._shared[0] != shared:
            self._drop_shared()
            cancel = threading.Event()
            self._shared = (shared, self._pool.submit(_shared_digest, self._index, shared, cancel), cancel)
        if self._stored is None or self._stored[0] != shared:
            self._drop_stored(tmp)
            cancel = threading.Event()
            job = self._pool.submit(
                write_safetensors_subset, self.stored(shared), tmp / SAFE_WEIGHTS_NAME, cancel=cancel
            )
            self._stored = (shared, job, cancel)

    def finish(self, tmp: Path, shared: list[str]) -> tuple[int, dict[str, str], str | None]:
        """The weights for the true split ``shared``: (bytes of tensor data stored, sha256 of the
        weight files written, ``shared_sha256`` or None when nothing is shared)."""
        if not shared:
            known = copy_safetensors_base(
                self._policy_dir, tmp, head_files=[], dtype=None, link=False, verify=True
            )
            return sum(info.nbytes for _, _, info in self.stored([])), known.sha256, None
        self.start(tmp, shared)
        assert self._shared is not None and self._stored is not None
        stored_bytes, digest = self._stored[1].result()
        return stored_bytes, {SAFE_WEIGHTS_NAME: digest}, self._shared[1].result()

    def _drop_shared(self) -> None:
        if self._shared is not None:
            self._shared[2].set()  # a wrong guess: stop it at its next chunk
            self._shared = None

    def _drop_stored(self, tmp: Path) -> None:
        if self._stored is not None:
            _, job, cancel = self._stored
            cancel.set()
            try:
                job.result()
            except Cancelled:
                pass
            (tmp / SAFE_WEIGHTS_NAME).unlink(missing_ok=True)
            self._stored = None


def model_parameter_names(folder: Path, architecture: str) -> list[str]:
    """Parameter names in module order, from the config alone (the model is built on the meta device)."""
    import torch

    config = load_config(folder, where=str(folder))
    with torch.device("meta"):
        model = auto_class_for(architecture).from_config(config)
    return [n for n, _ in model.named_parameters(remove_duplicate=False)]


def _open_policy(policy: str | os.PathLike[str], num_shared_layers: int | None) -> tuple[Path, Manifest]:
    policy_dir = Path(policy).absolute()
    if not policy_dir.is_dir():
        raise SourceNotFoundError(f"{policy} does not exist", hint="pass the folder made by 'vhctl wrap'")
    manifest = Manifest.read(policy_dir)
    if manifest.kind != KIND_POLICY:
        raise UsageError(f"{policy} is a {manifest.kind} checkpoint", hint="make references from a policy")
    if "peft_policy" in manifest.extra:
        raise UsageError(
            f"{policy} is a PEFT policy", hint="its base is frozen already; use it as the reference"
        )
    if num_shared_layers is not None and num_shared_layers < 0:
        raise UsageError(f"--shared must be 0 or more, got {num_shared_layers}")
    return policy_dir, manifest


def _shared_names(
    policy_dir: Path,
    manifest: Manifest,
    index: dict[str, Any],
    num_shared_layers: int | None,
    pattern: str | None,
) -> tuple[list[str], str | None]:
    """The stored tensors before layer N (sorted) and the layer pattern that found them."""
    if num_shared_layers is None:
        if pattern is not None:
            raise UsageError("--pattern needs --shared N")
        return [], None
    from vhctl.modeling.reference import split_shared

    names = model_parameter_names(policy_dir, manifest.architecture)
    shared_params, found_pattern = split_shared(names, num_shared_layers, pattern)
    shared = sorted(n for n in set(shared_params) if n in index)
    if not shared:
        raise CheckpointError(f"none of the shared parameters of {policy_dir} is stored in its weight files")
    return shared, found_pattern


def _record_in_policy(
    manifest: Manifest, policy_dir: Path, out_dir: Path, frozen: dict[str, Any] | None
) -> None:
    """The policy's manifest: the shared layers frozen, the reference listed (or noted as external)."""
    rel = os.path.relpath(out_dir, policy_dir)
    if frozen is not None:
        manifest.frozen = frozen
    if not rel.startswith(".."):
        manifest.references = sorted(set(manifest.references) | {Path(rel).as_posix()})
    else:
        external = set(manifest.extra.get("external_references", [])) | {str(out_dir)}
        manifest.extra = {**manifest.extra, "external_references": sorted(external)}
    manifest.write(policy_dir)


def make_reference(
    policy: str | os.PathLike[str],
    *,
    num_shared_layers: int | None = None,
    pattern: str | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> ReferenceResult:
    """Write a reference checkpoint for ``policy`` (default ``POLICY/ref``).

    With ``num_shared_layers=N`` the embeddings and layers 0..N-1 are shared: the reference keeps their
    names and the sha256 of their bytes, not the bytes, and the policy's manifest records them as
    frozen. Without it the reference is a full frozen copy.
    """
    policy_dir, manifest = _open_policy(policy, num_shared_layers)
    out_dir = Path(out).absolute() if out is not None else policy_dir / DEFAULT_REF_DIR
    if out_dir == policy_dir:
        raise UsageError("--out must differ from the policy folder")
    index = tensor_index(policy_dir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(overlapped_imports())
        tmp, refused = open_output_early(stack, out_dir, force=force)
        weights = stack.enter_context(_ReferenceWeights(policy_dir, index))
        if num_shared_layers is not None and tmp is not None:  # while transformers' modeling code is imported
            weights.start(tmp, _guess_shared(index, num_shared_layers, pattern))
        shared, found_pattern = _shared_names(policy_dir, manifest, index, num_shared_layers, pattern)
        if refused is not None:
            raise refused
        assert tmp is not None
        for name in (CONFIG_NAME, GENERATION_CONFIG_NAME, VALUE_HEAD_NAME):
            if (policy_dir / name).is_file():
                shutil.copyfile(policy_dir / name, tmp / name)
        copy_tokenizer_files(policy_dir, tmp)
        stored_bytes, known, digest = weights.finish(tmp, shared)
        reference = ReferenceInfo(
            policy=os.path.relpath(policy_dir, out_dir), num_shared_layers=num_shared_layers,
            pattern=found_pattern, shared_tensors=shared, shared_sha256=digest,
        )  # fmt: skip
        finish_manifest(tmp, Manifest(
            kind=KIND_REFERENCE, architecture=manifest.architecture, model_type=manifest.model_type,
            value_head=manifest.value_head, base_model=dict(manifest.base_model), reference=reference,
        ), known)  # fmt: skip
    frozen = (
        None
        if num_shared_layers is None
        else {"num_shared_layers": num_shared_layers, "pattern": found_pattern}
    )
    _record_in_policy(manifest, policy_dir, out_dir, frozen)
    return ReferenceResult(
        out=out_dir, policy=policy_dir, num_shared_layers=num_shared_layers, pattern=found_pattern,
        shared_tensors=len(shared), stored_tensors=len(index) - len(shared), stored_bytes=stored_bytes,
        shared_bytes=sum(index[n][1].nbytes for n in shared),
    )  # fmt: skip
