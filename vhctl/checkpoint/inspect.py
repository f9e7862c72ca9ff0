"""What is in a checkpoint, from its manifest and safetensors headers only (no tensor is loaded).

``inspect_checkpoint`` backs ``vhctl info``. It also describes folders that are not vhctl checkpoints
(a plain transformers model, a TRL checkpoint with the head inside ``model.safetensors``) so that a
user can see what ``vhctl wrap`` would start from. It does not check hashes: that is ``validate``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vhctl.checkpoint.config import detect_architecture
from vhctl.checkpoint.manifest import (
    AdapterInfo,
    Manifest,
    ReferenceInfo,
    ValueHeadInfo,
    iter_checkpoint_files,
    manifest_type_errors,
)
from vhctl.checkpoint.tensors import SafetensorsHeader, read_header, read_index, tensor_index
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_NAME,
    CONFIG_NAME,
    KIND_REFERENCE,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    V_HEAD_PREFIX,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, ManifestError, NotAModelError, VhctlError
from vhctl.io.files import existing_folder, safe_relpath

__all__ = [
    "LAYOUT_PEFT",
    "LAYOUT_TRANSFORMERS",
    "LAYOUT_TRL",
    "LAYOUT_VHCTL",
    "AdapterSummary",
    "BaseModelRef",
    "CheckpointInfo",
    "FileSize",
    "HeadInBase",
    "HeadSummary",
    "ListedReference",
    "ParameterCounts",
    "ReferenceSummary",
    "inspect_checkpoint",
]

LAYOUT_VHCTL = "vhctl"
LAYOUT_TRL = "trl"
LAYOUT_TRANSFORMERS = "transformers"
LAYOUT_PEFT = "peft-adapter"


@dataclass
class FileSize:
    """One file of the folder; ``size`` None when it cannot be read."""

    path: str
    size: int | None


@dataclass
class BaseModelRef:
    """Where the base model came from (the manifest's record, or a config's ``_name_or_path``)."""

    source: object
    revision: object


@dataclass
class ParameterCounts:
    """Parameters by part; None where a header could not be read (or a shared part not found)."""

    base: int | None
    base_stored: int | None  # a reference without the tensors it shares with its policy
    value_head: int | None
    adapters: dict[str, int | None] = field(default_factory=dict)


@dataclass
class HeadSummary:
    """A value head in a file of its own: its header's facts and, in a vhctl checkpoint, how it was
    made (the manifest's ``value_head``)."""

    present: bool
    shape: list[int] | None = None
    file_dtype: str | None = None
    parameters: int | None = None
    made: ValueHeadInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        facts = {"present": self.present, "shape": self.shape, "file_dtype": self.file_dtype,
                 "parameters": self.parameters}  # fmt: skip
        return {**asdict(self.made), **facts} if self.made is not None else facts


@dataclass
class HeadInBase:
    """A TRL head stored among the base weights (``v_head.*`` keys in ``model.safetensors``)."""

    keys: list[str]
    present: bool = True
    file: str = "(inside base weights)"
    parameters: None = None  # not counted apart from the base

    def to_dict(self) -> dict[str, Any]:
        return {"present": self.present, "file": self.file, "keys": self.keys}


@dataclass
class AdapterSummary:
    """A PEFT adapter: its config's facts and its ``score`` head's shape; in a vhctl checkpoint also
    the manifest's record (``listed``), or ``policy`` for a PEFT policy's own adapter."""

    present: bool
    r: object  # as adapter_config.json gives them
    target_modules: object
    base_model_name_or_path: object
    score_shape: list[int] | None
    listed: AdapterInfo | None = None
    policy: bool = False

    def to_dict(self) -> dict[str, Any]:
        facts = {"present": self.present, "r": self.r, "target_modules": self.target_modules,
                 "base_model_name_or_path": self.base_model_name_or_path, "score_shape": self.score_shape}  # fmt: skip
        if self.listed is not None:
            return {**asdict(self.listed), **facts}
        return {"path": ".", "role": "policy", **facts} if self.policy else facts


@dataclass
class ListedReference:
    """A reference a policy's manifest lists, and whether its folder holds a checkpoint."""

    path: str
    found: bool


@dataclass
class ReferenceSummary:
    """A reference checkpoint's link to its policy."""

    policy: str | None
    policy_found: bool
    num_shared_layers: int | None
    pattern: str | None
    shared_tensors: int
    shared_sha256: str | None


@dataclass
class CheckpointInfo:
    """What ``vhctl info`` shows; :meth:`to_dict` is its ``--json`` document.

    ``layout`` is ``vhctl``, ``trl``, ``transformers`` or ``peft-adapter``; the manifest's fields
    (``format_version``, ``kind``...) are None for a folder without ``vhctl.json``.
    """

    path: str
    layout: str
    format_version: int | None
    kind: str | None
    architecture: str | None
    model_type: object
    base_model: BaseModelRef
    vhctl_version: str | None
    parameters: ParameterCounts
    dtypes: list[str]
    value_head: HeadSummary | HeadInBase | None
    adapters: dict[str, AdapterSummary]
    frozen: dict[str, Any] | None
    references: list[ListedReference]
    reference: ReferenceSummary | None
    shared_layers: object
    files: list[FileSize] = field(default_factory=list)
    total_size: int = 0
    unreadable: list[str] = field(default_factory=list)
    pickle_weights: bool | None = None  # a folder without vhctl.json: whether it has pickle weights

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path, "layout": self.layout, "format_version": self.format_version, "kind": self.kind,
            "architecture": self.architecture, "model_type": self.model_type, "base_model": asdict(self.base_model),
            "vhctl_version": self.vhctl_version, "parameters": asdict(self.parameters), "dtypes": self.dtypes,
            "value_head": None if self.value_head is None else self.value_head.to_dict(),
            "adapters": {name: ad.to_dict() for name, ad in self.adapters.items()}, "frozen": self.frozen,
            "references": [asdict(r) for r in self.references],
            "reference": None if self.reference is None else asdict(self.reference),
            "shared_layers": self.shared_layers, "files": [asdict(f) for f in self.files],
            "total_size": self.total_size, "unreadable": self.unreadable,
        }  # fmt: skip
        if self.pickle_weights is not None:
            data["pickle_weights"] = self.pickle_weights
        return data


def _is_head_key(name: str) -> bool:
    return name.startswith(V_HEAD_PREFIX) or f".{V_HEAD_PREFIX}" in name


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _Headers:
    """Reads each safetensors header once and remembers which could not be read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[str, SafetensorsHeader | None] = {}
        self.unreadable: list[str] = []

    def get(self, rel: str) -> SafetensorsHeader | None:
        if rel not in self.cache:
            try:
                self.cache[rel] = read_header(self.root / rel)
            except CheckpointError:
                self.cache[rel] = None
                self.unreadable.append(rel)
        return self.cache[rel]


def _base_weight_files(root: Path) -> list[str] | None:
    """Relative paths of the base weight files (None when the index is unreadable)."""
    if (root / SAFE_WEIGHTS_INDEX_NAME).is_file():
        try:
            return sorted(set(read_index(root).values()))
        except CheckpointError:
            return None
    if (root / SAFE_WEIGHTS_NAME).is_file():
        return [SAFE_WEIGHTS_NAME]
    return []


@dataclass
class _Base:
    """The base weights, from their headers."""

    files: list[str]
    parameters: int | None
    dtypes: list[str]
    head_keys: list[str]
    pickle: bool


def _base_summary(root: Path, headers: _Headers) -> _Base:
    """Parameter count, dtypes and any TRL-style head keys of the base weights, from headers."""
    files = _base_weight_files(root)
    params = 0
    dtypes: set[str] = set()
    head_keys: list[str] = []
    complete = files is not None
    for rel in files or []:
        header = headers.get(rel) if (root / rel).is_file() else None
        if header is None:
            complete = False
            continue
        for name, info in header.tensors.items():
            if _is_head_key(name):
                head_keys.append(name)
                continue
            params += info.numel
            dtypes.add(info.dtype_name)
    pickle = (root / PT_WEIGHTS_NAME).is_file() or (root / PT_WEIGHTS_INDEX_NAME).is_file()
    return _Base(
        files or [], params if complete and files else None, sorted(dtypes), sorted(head_keys), pickle
    )


def _files(root: Path) -> list[FileSize]:
    rels = iter_checkpoint_files(root)
    rels += [n for n in (MANIFEST_NAME, MODEL_CARD_NAME) if (root / n).is_file()]
    out = []
    for rel in sorted(rels):
        try:
            size: int | None = (root / rel).stat().st_size
        except OSError:
            size = None
        out.append(FileSize(rel, size))
    return out


def _adapter_summary(root: Path, rel_dir: str, headers: _Headers) -> tuple[AdapterSummary, int | None]:
    """An adapter folder's summary, and its parameter count (None: its header is unreadable)."""
    folder = root / rel_dir
    config = _read_json(folder / ADAPTER_CONFIG_NAME) or {}
    st_rel = f"{rel_dir}/{ADAPTER_SAFE_NAME}" if rel_dir else ADAPTER_SAFE_NAME
    header = headers.get(st_rel) if (root / st_rel).is_file() else None
    score = None
    if header is not None:
        for info in header.tensors.values():
            if "score" in info.name.split(".") and info.name.endswith("weight"):
                score = list(info.shape)
    summary = AdapterSummary(
        present=(folder / ADAPTER_CONFIG_NAME).is_file() and (root / st_rel).is_file(),
        r=config.get("r"),
        target_modules=config.get("target_modules"),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        score_shape=score,
    )
    return summary, sum(i.numel for i in header.tensors.values()) if header is not None else None


def _head_summary(root: Path, rel: str, headers: _Headers) -> HeadSummary:
    header = headers.get(rel) if (root / rel).is_file() else None
    head = HeadSummary(present=(root / rel).is_file())
    if header is not None:
        weight = header.tensors.get(V_HEAD_WEIGHT)
        if weight is not None:
            head.shape = list(weight.shape)
            head.file_dtype = weight.dtype_name
        head.parameters = sum(i.numel for i in header.tensors.values())
    return head


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Describe the checkpoint (or model folder) at ``path``.

    Args:
        path: a vhctl checkpoint, a transformers model folder, a TRL checkpoint or a PEFT adapter.

    Returns:
        A :class:`CheckpointInfo` (its ``to_dict()`` is the JSON of ``vhctl info --json``): the
            layout, manifest facts, parameter counts, dtypes, value head, adapters, references,
            files with their sizes, and the headers that could not be read.

    Raises:
        SourceNotFoundError: ``path`` does not exist.
        NotAModelError: ``path`` is a file, or a folder with no model in it.
        ManifestError: ``vhctl.json`` is there but broken (run ``vhctl validate`` for details).
    """
    root = existing_folder(path, hint="pass the folder of a checkpoint")
    headers = _Headers(root)
    if (root / MANIFEST_NAME).is_file():
        info = _describe_vhctl(root, Manifest.read(root), headers)
    else:
        info = _describe_other(root, headers)
    info.files = _files(root)
    info.total_size = sum(f.size or 0 for f in info.files)
    info.unreadable = sorted(headers.unreadable)
    return info


def _adapters_summary(
    root: Path, manifest: Manifest, headers: _Headers
) -> tuple[dict[str, AdapterSummary], dict[str, int | None]]:
    """Each adapter (and a PEFT policy's own) with its parameter count."""
    adapters: dict[str, AdapterSummary] = {}
    adapter_params: dict[str, int | None] = {}
    for name, ad in sorted(manifest.adapters.items()):
        adapters[name], adapter_params[name] = _adapter_summary(root, ad.path, headers)
        adapters[name].listed = ad
    peft_policy = manifest.extra.get("peft_policy") if isinstance(manifest.extra, dict) else None
    if peft_policy is not None:
        adapters["policy"], adapter_params["policy"] = _adapter_summary(root, "", headers)
        adapters["policy"].policy = True
    return adapters, adapter_params


def _reference_summary(
    root: Path, ref: ReferenceInfo, base_params: int | None
) -> tuple[ReferenceSummary, int | None]:
    """A reference's link to its policy, and its base parameters counting the shared ones."""
    policy_dir = (root / ref.policy).resolve() if isinstance(ref.policy, str) and ref.policy else None
    policy_found = policy_dir is not None and (policy_dir / MANIFEST_NAME).is_file()
    reference = ReferenceSummary(
        policy=ref.policy, policy_found=policy_found, num_shared_layers=ref.num_shared_layers,
        pattern=ref.pattern, shared_tensors=len(ref.shared_tensors or []), shared_sha256=ref.shared_sha256,
    )  # fmt: skip
    if ref.shared_tensors and base_params is not None:
        shared_params = None
        if policy_found and policy_dir is not None:
            try:
                index = tensor_index(policy_dir)
                shared_params = sum(index[n][1].numel for n in ref.shared_tensors)
            except (CheckpointError, KeyError):
                shared_params = None
        base_params = base_params + shared_params if shared_params is not None else None
    return reference, base_params


def _describe_vhctl(root: Path, manifest: Manifest, headers: _Headers) -> CheckpointInfo:
    errors = manifest_type_errors(manifest)
    if errors:
        raise ManifestError(
            f"{root / MANIFEST_NAME} does not follow the vhctl format: {errors[0]}",
            hint=f"run 'vhctl validate {root}' for every problem",
        )
    base = _base_summary(root, headers)
    head_rel = manifest.value_head.file
    try:
        head_rel = safe_relpath(head_rel, what="value_head.file")
    except VhctlError:
        head_rel = VALUE_HEAD_NAME
    head = _head_summary(root, head_rel, headers)
    head.made = manifest.value_head

    adapters, adapter_params = _adapters_summary(root, manifest, headers)
    base_params = base.parameters
    reference = None
    shared_layers = (
        (manifest.frozen or {}).get("num_shared_layers") if isinstance(manifest.frozen, dict) else None
    )
    if manifest.kind == KIND_REFERENCE and manifest.reference is not None:
        reference, base_params = _reference_summary(root, manifest.reference, base_params)
        shared_layers = manifest.reference.num_shared_layers

    references = [
        ListedReference(rel, isinstance(rel, str) and (root / rel / MANIFEST_NAME).is_file())
        for rel in manifest.references
    ]
    return CheckpointInfo(
        path=str(root), layout=LAYOUT_VHCTL, format_version=manifest.format_version, kind=manifest.kind,
        architecture=manifest.architecture, model_type=manifest.model_type,
        base_model=BaseModelRef(manifest.base_model.get("source"), manifest.base_model.get("revision")),
        vhctl_version=manifest.vhctl_version,
        parameters=ParameterCounts(base_params, base.parameters, head.parameters, adapter_params),
        dtypes=base.dtypes, value_head=head, adapters=adapters, frozen=manifest.frozen, references=references,
        reference=reference, shared_layers=shared_layers,
    )  # fmt: skip


def _describe_other(root: Path, headers: _Headers) -> CheckpointInfo:
    """A folder without vhctl.json: a transformers model, a TRL checkpoint or a PEFT adapter."""
    config = _read_json(root / CONFIG_NAME)
    if config is None and (root / ADAPTER_CONFIG_NAME).is_file():
        adapter, params = _adapter_summary(root, "", headers)
        return CheckpointInfo(
            path=str(root), layout=LAYOUT_PEFT, format_version=None, kind=None, architecture=None,
            model_type=None, base_model=BaseModelRef(adapter.base_model_name_or_path, None), vhctl_version=None,
            parameters=ParameterCounts(None, None, None, {"adapter": params}), dtypes=[], value_head=None,
            adapters={"adapter": adapter}, frozen=None, references=[], reference=None, shared_layers=None,
        )  # fmt: skip
    if config is None:
        raise NotAModelError(
            f"{root} holds neither vhctl.json nor config.json: it is not a model folder",
            hint="pass a checkpoint made by 'vhctl wrap' or a transformers model folder",
        )
    base = _base_summary(root, headers)
    head: HeadSummary | HeadInBase | None = None
    if (root / VALUE_HEAD_NAME).is_file():
        head = _head_summary(root, VALUE_HEAD_NAME, headers)
    elif base.head_keys:
        head = HeadInBase(base.head_keys)
    layout = LAYOUT_TRL if head is not None else LAYOUT_TRANSFORMERS
    architecture = None
    try:
        architecture = detect_architecture(SimpleNamespace(**config))
    except VhctlError:  # encoder-only or unknown to transformers: leave it unknown
        architecture = None
    return CheckpointInfo(
        path=str(root), layout=layout, format_version=None, kind=None, architecture=architecture,
        model_type=config.get("model_type"), base_model=BaseModelRef(config.get("_name_or_path") or None, None),
        vhctl_version=None,
        parameters=ParameterCounts(base.parameters, base.parameters, head.parameters if head else None),
        dtypes=base.dtypes, value_head=head, adapters={}, frozen=None, references=[], reference=None,
        shared_layers=None, pickle_weights=base.pickle,
    )  # fmt: skip
