"""Write a base model's files into a checkpoint: copied (or hard-linked) byte for byte where they can be.

Weights are deserialised only when they must change: a file that also holds a TRL head, a dtype
conversion, or pickle-only weights (converted to safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vhctl.checkpoint.config import auto_class_for, quiet_transformers
from vhctl.checkpoint.tensors import weight_files
from vhctl.constants import SAFE_WEIGHTS_INDEX_NAME
from vhctl.io.files import BackgroundHasher, link_or_copy

__all__ = ["convert_pickle_base", "copy_safetensors_base", "strip_head_from_safetensors"]


def strip_head_from_safetensors(src: Path, dst: Path, dtype: torch.dtype | None) -> None:
    """Rewrite one weight file without its ``v_head`` keys (and cast floats to ``dtype`` if given)."""
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


def copy_safetensors_base(
    src: Path, dst: Path, *, head_files: list[str], dtype: torch.dtype | None, link: bool,
    hasher: BackgroundHasher | None = None,
) -> dict[str, str]:  # fmt: skip
    """Copy (or link) the base's weight files; rewrite those holding ``v_head`` keys or needing ``dtype``.

    Returns the sha256 of the files copied verbatim that ``hasher`` hashed at the source meanwhile.
    """
    written = []
    known: dict[str, str] = {}
    for rel in weight_files(src):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel in head_files or dtype is not None:
            strip_head_from_safetensors(src / rel, dst / rel, dtype)
        else:
            link_or_copy(src / rel, dst / rel, link=link)
            digest = hasher.digest(src / rel) if hasher is not None else None
            if digest is not None and (dst / rel).stat().st_size == (src / rel).stat().st_size:
                known[rel] = digest
        written.append(rel)
    index = src / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if "v_head." not in k}
        if dtype is not None or head_files:
            total = sum((dst / rel).stat().st_size for rel in written)
            data.setdefault("metadata", {})["total_size"] = total
        (dst / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return known


def convert_pickle_base(src: Path, dst: Path, architecture: str, dtype: torch.dtype | None) -> list[str]:
    """Pickle-only weights (allowed by the caller): load with transformers and write safetensors."""
    with quiet_transformers():
        model = auto_class_for(architecture).from_pretrained(
            str(src), use_safetensors=False, trust_remote_code=False, dtype=dtype or "auto"
        )
    model.save_pretrained(str(dst))
    return [p.name for p in dst.iterdir() if p.name.startswith("model")]
