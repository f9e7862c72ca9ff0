"""Find a value head wherever a checkpoint keeps it: vhctl's split file or TRL's layouts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vhctl.checkpoint.manifest import Manifest
from vhctl.constants import (
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    V_HEAD_BIAS,
    V_HEAD_PREFIX,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, IntegrityError, UnsafeLoadError, VhctlError
from vhctl.io.files import safe_relpath, sha256_file

__all__ = [
    "FoundHead",
    "check_head_file",
    "check_head_state",
    "find_head",
    "load_pickle_weights",
    "read_safetensors_keys",
    "safetensors_keys",
    "write_head",
]


@dataclass
class FoundHead:
    """A value head read from a checkpoint.

    ``state`` maps ``v_head.summary.weight``/``v_head.summary.bias`` to tensors; ``base_files`` lists
    the base weight files that also hold ``v_head`` keys (TRL layouts), which a vhctl checkpoint must
    not keep there.
    """

    state: dict[str, torch.Tensor]
    layout: str
    files: list[str]
    base_files: list[str] = field(default_factory=list)


def _is_head_key(key: str) -> bool:
    return key.startswith(V_HEAD_PREFIX) or f".{V_HEAD_PREFIX}" in key


def _normalise(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        idx = key.find(V_HEAD_PREFIX)
        out[key[idx:]] = value
    return out


def read_safetensors_keys(path: Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        wanted = keys if keys is not None else list(handle.keys())
        return {k: handle.get_tensor(k) for k in wanted}


def safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return list(handle.keys())


def load_pickle_weights(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Read a pickle weight file, only when allowed and only with ``weights_only=True``."""
    if not allow_pickle:
        raise UnsafeLoadError(
            f"{path} is a pickle file; vhctl does not load pickles unless asked",
            hint="pass --allow-pickle (library: allow_pickle=True); it is then read with weights_only=True",
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for bad pickles
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def find_head(folder: Path, *, allow_pickle: bool = False) -> tuple[FoundHead | None, list[str]]:
    """Look for a value head in ``folder``; return it (or None) and the files looked in."""
    looked: list[str] = []
    split = folder / VALUE_HEAD_NAME
    looked.append(VALUE_HEAD_NAME)
    if split.is_file():
        state = read_safetensors_keys(split)
        return FoundHead(_normalise(state), "vhctl", [VALUE_HEAD_NAME]), looked

    single = folder / SAFE_WEIGHTS_NAME
    looked.append(SAFE_WEIGHTS_NAME)
    if single.is_file():
        keys = [k for k in safetensors_keys(single) if _is_head_key(k)]
        if keys:
            state = read_safetensors_keys(single, keys)
            return FoundHead(
                _normalise(state), "trl-safetensors", [SAFE_WEIGHTS_NAME], [SAFE_WEIGHTS_NAME]
            ), looked

    index = folder / SAFE_WEIGHTS_INDEX_NAME
    looked.append(SAFE_WEIGHTS_INDEX_NAME)
    if index.is_file():
        weight_map = _weight_map(index)
        by_file: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            if _is_head_key(key):
                by_file.setdefault(shard, []).append(key)
        if by_file:
            merged: dict[str, torch.Tensor] = {}
            for shard, keys in sorted(by_file.items()):
                merged.update(read_safetensors_keys(folder / shard, keys))
            shards = sorted(by_file)
            return FoundHead(_normalise(merged), "trl-sharded", shards, shards), looked

    for name in (PT_WEIGHTS_NAME, PT_WEIGHTS_INDEX_NAME):
        looked.append(name)
    if (single.is_file() or index.is_file()) and not allow_pickle:
        # The weights are in safetensors: a pickle next to them is never opened unless allowed.
        return None, looked
    pt = folder / PT_WEIGHTS_NAME
    pt_index = folder / PT_WEIGHTS_INDEX_NAME
    if pt.is_file():
        full = load_pickle_weights(pt, allow_pickle=allow_pickle)
        state = {k: v for k, v in full.items() if _is_head_key(k)}
        if state:
            return FoundHead(_normalise(state), "trl-bin", [PT_WEIGHTS_NAME], [PT_WEIGHTS_NAME]), looked
    elif pt_index.is_file():
        weight_map = _weight_map(pt_index)
        shards = sorted({shard for key, shard in weight_map.items() if _is_head_key(key)})
        state = {}
        for shard in shards:
            full = load_pickle_weights(folder / shard, allow_pickle=allow_pickle)
            state.update({k: v for k, v in full.items() if _is_head_key(k)})
        if state:
            return FoundHead(_normalise(state), "trl-bin-sharded", shards, shards), looked
    return None, looked


def _weight_map(index: Path) -> dict[str, str]:
    """The index's name -> shard map; shard paths must stay inside the folder (no ``..``, no ``/abs``)."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
        return {str(k): safe_relpath(v, what="shard file") for k, v in weight_map.items()}
    except (OSError, ValueError, KeyError, TypeError, VhctlError) as exc:
        raise CheckpointError(f"{index} is not a valid weight index: {exc}") from exc


def write_head(folder: Path, weight: torch.Tensor, bias: torch.Tensor) -> Path:
    """Write ``value_head.safetensors`` (contiguous CPU tensors, ``format: pt`` metadata)."""
    from safetensors.torch import save_file

    path = folder / VALUE_HEAD_NAME
    tensors = {
        V_HEAD_WEIGHT: weight.detach().to("cpu").contiguous().clone(),
        V_HEAD_BIAS: bias.detach().to("cpu").contiguous().clone(),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def check_head_state(state: dict[str, torch.Tensor], hidden_size: int, *, where: str) -> None:
    """Refuse a head whose tensors do not fit the model: a wrong head is worse than none."""
    weight = state.get(V_HEAD_WEIGHT)
    bias = state.get(V_HEAD_BIAS)
    if weight is None or bias is None:
        raise CheckpointError(
            f"the value head in {where} lacks {V_HEAD_WEIGHT if weight is None else V_HEAD_BIAS}",
            hint="run 'vhctl validate' on it",
        )
    if tuple(weight.shape) != (1, hidden_size) or tuple(bias.shape) != (1,):
        raise CheckpointError(
            f"the value head in {where} has shape {tuple(weight.shape)}/{tuple(bias.shape)}, "
            f"the model needs (1, {hidden_size})/(1,)",
            hint="the head was made for another model",
        )
    if not weight.is_floating_point() or not bias.is_floating_point():
        raise CheckpointError(f"the value head in {where} is not floating point ({weight.dtype})")


def check_head_file(folder: Path, manifest: Manifest) -> None:
    """Refuse a head file that is not the one the manifest vouches for (size, then sha256).

    The head is tiny, so this costs nothing; a swapped or edited head would otherwise be scored
    silently. The codes are ``vhctl validate``'s (base weights are left to ``validate``).
    """
    rel = manifest.value_head.file if isinstance(manifest.value_head.file, str) else VALUE_HEAD_NAME
    path = folder / rel
    entry = manifest.files.get(rel)
    if entry is None or not path.is_file():
        return  # a missing head is reported where it is loaded
    size = path.stat().st_size
    if size != entry.size:
        raise IntegrityError(
            f"{path} is {size} bytes, the manifest says {entry.size} (size-mismatch): the head was changed "
            "or swapped since vhctl wrote the checkpoint",
            hint=f"run 'vhctl validate {folder}'",
        )
    if sha256_file(path) != entry.sha256:
        raise IntegrityError(
            f"{path} does not match the sha256 in the manifest (hash-mismatch): the head was changed or "
            "swapped since vhctl wrote the checkpoint",
            hint=f"run 'vhctl validate {folder}'",
        )
