"""Tensor-level reading and writing for conversions: lazy reads, shard-preserving writes.

Conversions rename keys and never compute on the backbone, so tensors are read one file at a time
and written back bit for bit (a dtype cast only when the user asks for one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vhctl.checkpoint.heads import load_pickle_weights
from vhctl.checkpoint.tensors import tensor_index, weight_files
from vhctl.constants import (
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
)
from vhctl.errors import CheckpointError, NotAModelError

__all__ = [
    "WeightSet",
    "cast",
    "read_weight_set",
    "shard_name",
    "write_json",
    "write_weights",
]


@dataclass
class WeightSet:
    """The tensors of one model folder, grouped by the file that holds them (in file order).

    ``groups`` is ``[(relpath, [keys...]), ...]``; a tensor is read only when asked for. Pickle files
    are read (``weights_only=True``, memory-mapped) only when the caller allowed them.
    """

    folder: Path
    groups: list[tuple[str, list[str]]]
    pickle: bool = False
    _where: dict[str, Path] = field(default_factory=dict)
    _loaded: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    _extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def sharded(self) -> bool:
        return len(self.groups) > 1

    def keys(self) -> list[str]:
        return [k for _, keys in self.groups for k in keys]

    def __contains__(self, key: str) -> bool:
        return key in self._where or key in self._extra

    def get(self, key: str) -> torch.Tensor:
        """One tensor, on the CPU."""
        if key in self._extra:
            return self._extra[key]
        path = self._where.get(key)
        if path is None:
            raise KeyError(key)
        if self.pickle:
            return self._loaded[str(path)][key]
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read tensor {key!r} from {path}: {exc}") from exc

    def group_tensors(self, index: int) -> dict[str, torch.Tensor]:
        """All tensors of one file (safetensors: read in one pass)."""
        rel, keys = self.groups[index]
        if self.pickle:
            state = self._loaded[str(self.folder / rel)]
            return {k: state[k] for k in keys}
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        own = [k for k in keys if k not in self._extra]
        if own:
            path = self.folder / rel
            try:
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    for key in own:
                        out[key] = handle.get_tensor(key)
            except Exception as exc:
                raise CheckpointError(f"cannot read {path}: {exc}") from exc
        out.update({k: self._extra[k] for k in keys if k in self._extra})
        return out

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Add tensors held elsewhere (a reference's shared layers) to the first group."""
        self._extra.update(tensors)
        self.groups[0][1].extend(k for k in tensors if k not in self.groups[0][1])


def read_weight_set(folder: Path, *, allow_pickle: bool = False) -> WeightSet:
    """The weights of ``folder``: safetensors (single or sharded), else pickle when allowed.

    Raises:
        NotAModelError: the folder has no weights.
        UnsafeLoadError: only pickle weights are there and ``allow_pickle`` is False.
        CheckpointError: a header, index or pickle is corrupt.
    """
    if (folder / SAFE_WEIGHTS_NAME).is_file() or (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        index = tensor_index(folder)
        groups: list[tuple[str, list[str]]] = []
        for rel in weight_files(folder):
            path = folder / rel
            groups.append((rel, sorted(k for k, (p, _) in index.items() if p == path)))
        return WeightSet(folder, groups, _where={k: p for k, (p, _) in index.items()})
    pt_files: list[str] = []
    if (folder / PT_WEIGHTS_NAME).is_file():
        pt_files = [PT_WEIGHTS_NAME]
    elif (folder / PT_WEIGHTS_INDEX_NAME).is_file():
        try:
            data = json.loads((folder / PT_WEIGHTS_INDEX_NAME).read_text(encoding="utf-8"))
            pt_files = sorted(set(data["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{folder / PT_WEIGHTS_INDEX_NAME} is not a valid weight index: {exc}"
            ) from exc
    if not pt_files:
        raise NotAModelError(f"{folder} holds no model weights", hint="point at a saved model folder")
    ws = WeightSet(folder, [], pickle=True)
    for rel in pt_files:
        path = folder / rel
        state = load_pickle_weights(path, allow_pickle=allow_pickle)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path} is not a state dict of tensors")
        ws._loaded[str(path)] = state
        ws.groups.append((rel, list(state)))
        ws._where.update({k: path for k in state})
    return ws


def shard_name(index: int, count: int) -> str:
    """transformers' shard file name: ``model-00001-of-00003.safetensors``."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no storage (safetensors refuses aliased tensors)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def write_weights(dest: Path, groups: Iterable[dict[str, torch.Tensor]], count: int) -> list[str]:
    """Write ``count`` groups as ``model.safetensors`` (one) or shards plus an index (several).

    Groups are consumed one at a time, so only one file's tensors are in memory. Returns the
    relative paths written.
    """
    from safetensors.torch import save_file

    written: list[str] = []
    weight_map: dict[str, str] = {}
    total = 0
    it: Iterator[dict[str, torch.Tensor]] = iter(groups)
    for i in range(count):
        tensors = _storable(next(it))
        name = SAFE_WEIGHTS_NAME if count == 1 else shard_name(i, count)
        save_file(tensors, str(dest / name), metadata={"format": "pt"})
        written.append(name)
        for key, tensor in tensors.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dest / SAFE_WEIGHTS_INDEX_NAME).write_text(
            json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        written.append(SAFE_WEIGHTS_INDEX_NAME)
    return written


def cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast floating-point tensors to ``dtype`` (integers and ``None`` leave it as it is)."""
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return tensor.to(dtype)
    return tensor


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
