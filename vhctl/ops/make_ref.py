"""``make-ref``: a frozen reference checkpoint that stores only what it does not share with its policy.

Works at the file level: tensors are copied as byte ranges from the policy's safetensors files, so
memory stays flat whatever the model size.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vhctl.checkpoint.config import auto_class_for, load_config
from vhctl.checkpoint.manifest import Manifest, ReferenceInfo, finish_manifest
from vhctl.checkpoint.tensors import iter_tensor_bytes, shared_tensors_sha256, tensor_index
from vhctl.checkpoint.tokenizer import copy_tokenizer_files
from vhctl.constants import (
    CONFIG_NAME,
    DEFAULT_REF_DIR,
    GENERATION_CONFIG_NAME,
    KIND_POLICY,
    KIND_REFERENCE,
    SAFE_WEIGHTS_NAME,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, SourceNotFoundError, UsageError
from vhctl.io.files import atomic_output_dir
from vhctl.modeling.reference import split_shared
from vhctl.ops.base_files import copy_safetensors_base

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


def write_safetensors_subset(entries: list[tuple[str, Path, Any]], dst: Path) -> int:
    """Write a safetensors file from byte ranges of other files; return the bytes of tensor data.

    ``entries`` are ``(name, file, TensorInfo)``; tensors are laid out in name order.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    ordered = sorted(entries, key=lambda e: e[0])
    for name, _, info in ordered:
        header[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % _ALIGN)
    with open(dst, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little"))
        handle.write(raw)
        for _, path, info in ordered:
            for chunk in iter_tensor_bytes(path, info):
                handle.write(chunk)
    return offset


def model_parameter_names(folder: Path, architecture: str) -> list[str]:
    """Parameter names in module order, from the config alone (the model is built on the meta device)."""
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
        raise UsageError(f"{policy} is a PEFT policy", hint="its base is frozen already; use it as the reference")
    if num_shared_layers is not None and num_shared_layers < 0:
        raise UsageError(f"--shared must be 0 or more, got {num_shared_layers}")
    return policy_dir, manifest


def _shared_names(
    policy_dir: Path, manifest: Manifest, index: dict[str, Any], num_shared_layers: int | None, pattern: str | None
) -> tuple[list[str], str | None]:
    """The stored tensors before layer N (sorted) and the layer pattern that found them."""
    if num_shared_layers is None:
        if pattern is not None:
            raise UsageError("--pattern needs --shared N")
        return [], None
    names = model_parameter_names(policy_dir, manifest.architecture)
    shared_params, found_pattern = split_shared(names, num_shared_layers, pattern)
    shared = sorted(n for n in set(shared_params) if n in index)
    if not shared:
        raise CheckpointError(f"none of the shared parameters of {policy_dir} is stored in its weight files")
    return shared, found_pattern


def _record_in_policy(manifest: Manifest, policy_dir: Path, out_dir: Path, frozen: dict[str, Any] | None) -> None:
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
    shared, found_pattern = _shared_names(policy_dir, manifest, index, num_shared_layers, pattern)
    shared_set = set(shared)
    digest = shared_tensors_sha256(policy_dir, shared) if shared else None
    stored = [(name, path, info) for name, (path, info) in index.items() if name not in shared_set]
    with atomic_output_dir(out_dir, force=force) as tmp:
        for name in (CONFIG_NAME, GENERATION_CONFIG_NAME, VALUE_HEAD_NAME):
            if (policy_dir / name).is_file():
                shutil.copyfile(policy_dir / name, tmp / name)
        copy_tokenizer_files(policy_dir, tmp)
        if shared:
            stored_bytes = write_safetensors_subset(stored, tmp / SAFE_WEIGHTS_NAME)
        else:
            copy_safetensors_base(policy_dir, tmp, head_files=[], dtype=None, link=False)
            stored_bytes = sum(info.nbytes for _, _, info in stored)
        reference = ReferenceInfo(
            policy=os.path.relpath(policy_dir, out_dir), num_shared_layers=num_shared_layers,
            pattern=found_pattern, shared_tensors=shared, shared_sha256=digest,
        )  # fmt: skip
        finish_manifest(tmp, Manifest(
            kind=KIND_REFERENCE, architecture=manifest.architecture, model_type=manifest.model_type,
            value_head=manifest.value_head, base_model=dict(manifest.base_model), reference=reference,
        ))  # fmt: skip
    frozen = None if num_shared_layers is None else {"num_shared_layers": num_shared_layers, "pattern": found_pattern}
    _record_in_policy(manifest, policy_dir, out_dir, frozen)
    return ReferenceResult(
        out=out_dir, policy=policy_dir, num_shared_layers=num_shared_layers, pattern=found_pattern,
        shared_tensors=len(shared), stored_tensors=len(stored), stored_bytes=stored_bytes,
        shared_bytes=sum(index[n][1].nbytes for n in shared),
    )  # fmt: skip
