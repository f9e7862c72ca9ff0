"""What is in a checkpoint, from its manifest and safetensors headers only (no tensor is loaded).

``inspect_checkpoint`` backs ``vhctl info``. It also describes folders that are not vhctl checkpoints
(a plain transformers model, a TRL checkpoint with the head inside ``model.safetensors``) so that a
user can see what ``vhctl wrap`` would start from. It does not check hashes: that is ``validate``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vhctl.checkpoint.config import detect_architecture
from vhctl.checkpoint.manifest import Manifest, iter_checkpoint_files, manifest_type_errors
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
    "inspect_checkpoint",
]

LAYOUT_VHCTL = "vhctl"
LAYOUT_TRL = "trl"
LAYOUT_TRANSFORMERS = "transformers"
LAYOUT_PEFT = "peft-adapter"


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


def _base_summary(root: Path, headers: _Headers) -> dict[str, Any]:
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
    return {
        "files": files or [],
        "parameters": params if complete and files else None,
        "dtypes": sorted(dtypes),
        "head_keys": sorted(head_keys),
        "pickle": (root / PT_WEIGHTS_NAME).is_file() or (root / PT_WEIGHTS_INDEX_NAME).is_file(),
    }


def _files(root: Path) -> list[dict[str, Any]]:
    rels = iter_checkpoint_files(root)
    rels += [n for n in (MANIFEST_NAME, MODEL_CARD_NAME) if (root / n).is_file()]
    out = []
    for rel in sorted(rels):
        try:
            size = (root / rel).stat().st_size
        except OSError:
            size = None
        out.append({"path": rel, "size": size})
    return out


def _adapter_summary(root: Path, rel_dir: str, headers: _Headers) -> dict[str, Any]:
    folder = root / rel_dir
    config = _read_json(folder / ADAPTER_CONFIG_NAME) or {}
    st_rel = f"{rel_dir}/{ADAPTER_SAFE_NAME}" if rel_dir else ADAPTER_SAFE_NAME
    header = headers.get(st_rel) if (root / st_rel).is_file() else None
    score = None
    if header is not None:
        for info in header.tensors.values():
            if "score" in info.name.split(".") and info.name.endswith("weight"):
                score = list(info.shape)
    return {
        "present": (folder / ADAPTER_CONFIG_NAME).is_file() and (root / st_rel).is_file(),
        "r": config.get("r"),
        "target_modules": config.get("target_modules"),
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "parameters": sum(i.numel for i in header.tensors.values()) if header is not None else None,
        "score_shape": score,
    }


def _head_summary(root: Path, rel: str, headers: _Headers) -> dict[str, Any]:
    header = headers.get(rel) if (root / rel).is_file() else None
    out: dict[str, Any] = {
        "present": (root / rel).is_file(),
        "shape": None,
        "file_dtype": None,
        "parameters": None,
    }
    if header is not None:
        weight = header.tensors.get(V_HEAD_WEIGHT)
        if weight is not None:
            out["shape"] = list(weight.shape)
            out["file_dtype"] = weight.dtype_name
        out["parameters"] = sum(i.numel for i in header.tensors.values())
    return out


def inspect_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe the checkpoint (or model folder) at ``path`` as a JSON-able dict.

    Keys: ``path``, ``layout`` (``vhctl``, ``trl``, ``transformers`` or ``peft-adapter``), ``format_version``,
    ``kind``, ``architecture``, ``model_type``, ``base_model``, ``vhctl_version``, ``parameters``
    (``base``, ``base_stored``, ``value_head``, ``adapters``), ``dtypes``, ``value_head``, ``adapters``,
    ``frozen``, ``references``, ``reference``, ``shared_layers``, ``files``, ``total_size``, ``unreadable``.

    Raises:
        SourceNotFoundError: ``path`` does not exist.
        NotAModelError: ``path`` is a file, or a folder with no model in it.
        ManifestError: ``vhctl.json`` is there but broken (run ``vhctl validate`` for details).
    """
    root = existing_folder(path, hint="pass the folder of a checkpoint")
    headers = _Headers(root)
    info: dict[str, Any] = {"path": str(root)}
    if (root / MANIFEST_NAME).is_file():
        info.update(_describe_vhctl(root, Manifest.read(root), headers))
    else:
        info.update(_describe_other(root, headers))
    files = _files(root)
    info["files"] = files
    info["total_size"] = sum(f["size"] or 0 for f in files)
    info["unreadable"] = sorted(headers.unreadable)
    return info


def _adapters_summary(
    root: Path, manifest: Manifest, headers: _Headers
) -> tuple[dict[str, Any], dict[str, int | None]]:
    """Each adapter (and a PEFT policy's own) with its parameter count."""
    adapters: dict[str, Any] = {}
    adapter_params: dict[str, int | None] = {}
    for name, ad in sorted(manifest.adapters.items()):
        summary = _adapter_summary(root, ad.path, headers)
        adapter_params[name] = summary.pop("parameters")
        adapters[name] = {**asdict(ad), **summary}
    peft_policy = manifest.extra.get("peft_policy") if isinstance(manifest.extra, dict) else None
    if peft_policy is not None:
        summary = _adapter_summary(root, "", headers)
        adapter_params["policy"] = summary.pop("parameters")
        adapters["policy"] = {"path": ".", "role": "policy", **summary}
    return adapters, adapter_params


def _reference_summary(root: Path, ref: Any, base_params: int | None) -> tuple[dict[str, Any], int | None]:
    """A reference's link to its policy, and its base parameters counting the shared ones."""
    policy_dir = (root / ref.policy).resolve() if isinstance(ref.policy, str) and ref.policy else None
    policy_found = policy_dir is not None and (policy_dir / MANIFEST_NAME).is_file()
    reference = {
        "policy": ref.policy,
        "policy_found": policy_found,
        "num_shared_layers": ref.num_shared_layers,
        "pattern": ref.pattern,
        "shared_tensors": len(ref.shared_tensors or []),
        "shared_sha256": ref.shared_sha256,
    }
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


def _describe_vhctl(root: Path, manifest: Manifest, headers: _Headers) -> dict[str, Any]:
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
    head = {**asdict(manifest.value_head), **_head_summary(root, head_rel, headers)}

    adapters, adapter_params = _adapters_summary(root, manifest, headers)
    base_params = base["parameters"]
    reference = None
    shared_layers = (
        (manifest.frozen or {}).get("num_shared_layers") if isinstance(manifest.frozen, dict) else None
    )
    if manifest.kind == KIND_REFERENCE and manifest.reference is not None:
        reference, base_params = _reference_summary(root, manifest.reference, base_params)
        shared_layers = manifest.reference.num_shared_layers

    references = [
        {"path": rel, "found": isinstance(rel, str) and (root / rel / MANIFEST_NAME).is_file()}
        for rel in manifest.references
    ]
    return {
        "layout": LAYOUT_VHCTL,
        "format_version": manifest.format_version,
        "kind": manifest.kind,
        "architecture": manifest.architecture,
        "model_type": manifest.model_type,
        "base_model": {
            "source": manifest.base_model.get("source"),
            "revision": manifest.base_model.get("revision"),
        },
        "vhctl_version": manifest.vhctl_version,
        "parameters": {
            "base": base_params,
            "base_stored": base["parameters"],
            "value_head": head["parameters"],
            "adapters": adapter_params,
        },
        "dtypes": base["dtypes"],
        "value_head": head,
        "adapters": adapters,
        "frozen": manifest.frozen,
        "references": references,
        "reference": reference,
        "shared_layers": shared_layers,
    }


def _describe_other(root: Path, headers: _Headers) -> dict[str, Any]:
    """A folder without vhctl.json: a transformers model, a TRL checkpoint or a PEFT adapter."""
    config = _read_json(root / CONFIG_NAME)
    if config is None and (root / ADAPTER_CONFIG_NAME).is_file():
        adapter = _adapter_summary(root, "", headers)
        return {
            "layout": LAYOUT_PEFT,
            "format_version": None,
            "kind": None,
            "architecture": None,
            "model_type": None,
            "base_model": {"source": adapter["base_model_name_or_path"], "revision": None},
            "vhctl_version": None,
            "parameters": {
                "base": None,
                "base_stored": None,
                "value_head": None,
                "adapters": {"adapter": adapter.pop("parameters")},
            },
            "dtypes": [],
            "value_head": None,
            "adapters": {"adapter": adapter},
            "frozen": None,
            "references": [],
            "reference": None,
            "shared_layers": None,
        }
    if config is None:
        raise NotAModelError(
            f"{root} holds neither vhctl.json nor config.json: it is not a model folder",
            hint="pass a checkpoint made by 'vhctl wrap' or a transformers model folder",
        )
    base = _base_summary(root, headers)
    head = None
    if (root / VALUE_HEAD_NAME).is_file():
        head = _head_summary(root, VALUE_HEAD_NAME, headers)
    elif base["head_keys"]:
        head = {"present": True, "file": "(inside base weights)", "keys": base["head_keys"]}
    layout = LAYOUT_TRL if head is not None else LAYOUT_TRANSFORMERS
    architecture = None
    try:
        architecture = detect_architecture(SimpleNamespace(**config))
    except VhctlError:  # encoder-only or unknown to transformers: leave it unknown
        architecture = None
    return {
        "layout": layout,
        "format_version": None,
        "kind": None,
        "architecture": architecture,
        "model_type": config.get("model_type"),
        "base_model": {"source": config.get("_name_or_path") or None, "revision": None},
        "vhctl_version": None,
        "parameters": {
            "base": base["parameters"],
            "base_stored": base["parameters"],
            "value_head": head.get("parameters") if head else None,
            "adapters": {},
        },
        "dtypes": base["dtypes"],
        "value_head": head,
        "adapters": {},
        "frozen": None,
        "references": [],
        "reference": None,
        "shared_layers": None,
        "pickle_weights": base["pickle"],
    }
