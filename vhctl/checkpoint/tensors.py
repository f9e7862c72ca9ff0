"""Read safetensors files without loading them: headers, byte ranges, and the shared-tensor hash.

Headers are parsed here (8-byte little-endian length, then JSON) rather than through
``safe_open`` so that a corrupt file yields one clear error instead of a Rust panic message, and so
that ``validate``/``info`` stay cheap: nothing but the header is read unless tensor bytes are asked
for. Tensor bytes are read as byte ranges, which is exact and dtype-agnostic (bf16 and fp8 too).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhctl.constants import PT_WEIGHTS_INDEX_NAME, PT_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from vhctl.errors import CheckpointError, IntegrityError, VhctlError
from vhctl.io.files import safe_relpath

__all__ = [
    "DTYPES",
    "FLOAT_CODES",
    "HEAD_FLOAT_NAMES",
    "MAX_HEADER_BYTES",
    "SafetensorsHeader",
    "TensorInfo",
    "code_dtype_name",
    "has_pickle_weights",
    "has_safetensors_weights",
    "iter_tensor_bytes",
    "read_header",
    "read_index",
    "shared_tensors_sha256",
    "state_dict_sha256",
    "tensor_index",
    "tensors_sha256",
    "weight_files",
]

# safetensors refuses headers above 100 MB; so do we (a bigger length is a corrupt file).
MAX_HEADER_BYTES = 100 * 1024 * 1024
_CHUNK_BYTES = 16 * 1024 * 1024

# safetensors dtype code -> (bits per element, torch dtype name)
DTYPES: dict[str, tuple[int, str]] = {
    "BOOL": (8, "bool"),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F4": (4, "float4_e2m1fn_x2"),
    "F6_E2M3": (6, "float6_e2m3"),
    "F6_E3M2": (6, "float6_e3m2"),
    "I16": (16, "int16"),
    "U16": (16, "uint16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I32": (32, "int32"),
    "U32": (32, "uint32"),
    "F32": (32, "float32"),
    "C64": (64, "complex64"),
    "F64": (64, "float64"),
    "I64": (64, "int64"),
    "U64": (64, "uint64"),
}
FLOAT_CODES = frozenset(
    {"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"}
)
# Dtypes a value head may have (a head in fp8 or an integer type cannot be trained).
HEAD_FLOAT_NAMES = frozenset({"float16", "bfloat16", "float32", "float64"})


def code_dtype_name(code: str) -> str:
    """Torch name of a safetensors dtype code (``BF16`` -> ``bfloat16``); unknown codes unchanged."""
    return DTYPES.get(code, (0, code))[1]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in its file; ``start``/``end`` are absolute byte offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype_name(self) -> str:
        return code_dtype_name(self.dtype)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_CODES

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0
    file_size: int = 0


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and check the header of a safetensors file; raise CheckpointError if it is corrupt.

    Checks that every tensor's byte range lies inside the file and matches its dtype and shape, so
    a truncated file is caught here without reading any tensor data.
    """
    path = Path(path)

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid safetensors file: {why}")

    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise bad(f"it is {file_size} bytes long, too short for a header")
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES or length > file_size - 8:
                raise bad(f"header length {length} does not fit in a {file_size}-byte file")
            raw = handle.read(length)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"the header is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise bad("the header is not a JSON object")
    data_start = 8 + length
    data_len = file_size - data_start
    metadata = data.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise bad("__metadata__ is not an object")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in data.items():
        try:
            code = entry["dtype"]
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
        except (TypeError, KeyError, ValueError) as exc:
            raise bad(f"entry {name!r} lacks dtype, shape or data_offsets") from exc
        if not isinstance(code, str) or code not in DTYPES:
            raise bad(f"tensor {name!r} has unknown dtype {code!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has invalid shape {list(shape)}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise bad(f"tensor {name!r} has invalid data_offsets {[begin, end]}")
        if end > data_len:
            raise bad(
                f"tensor {name!r} ends at byte {data_start + end} but the file has {file_size} bytes "
                "(truncated?)"
            )
        bits = DTYPES[code][0] * math.prod(shape)
        if bits % 8 == 0 and end - begin != bits // 8:
            raise bad(f"tensor {name!r} has {end - begin} bytes, its dtype and shape need {bits // 8}")
        tensors[name] = TensorInfo(name, code, shape, data_start + begin, data_start + end)
    return SafetensorsHeader(
        path, tensors, {str(k): str(v) for k, v in metadata.items()}, data_start, file_size
    )


def read_index(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The ``weight_map`` of ``model.safetensors.index.json`` (tensor name -> shard relpath)."""
    path = Path(folder) / SAFE_WEIGHTS_INDEX_NAME
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
        for name, shard in weight_map.items():
            if not isinstance(name, str) or not isinstance(shard, str):
                raise TypeError("weight_map must map names to file names")
            safe_relpath(shard, what="shard file")
    except VhctlError as exc:
        raise CheckpointError(f"{path} is not a valid weight index: {exc}") from exc
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid weight index: {exc}") from exc
    return {name: safe_relpath(shard) for name, shard in weight_map.items()}


def has_safetensors_weights(folder: Path) -> bool:
    """Whether the folder's base weights are safetensors (one file or an index of shards)."""
    return (folder / SAFE_WEIGHTS_NAME).is_file() or (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()


def has_pickle_weights(folder: Path) -> bool:
    """Whether the folder holds pickle weights (``pytorch_model.bin`` or its index)."""
    return (folder / PT_WEIGHTS_NAME).is_file() or (folder / PT_WEIGHTS_INDEX_NAME).is_file()


def weight_files(folder: str | os.PathLike[str]) -> list[str]:
    """Relative paths of the base model's safetensors files: the shards named by the index, or
    ``model.safetensors``; empty when the folder has neither (raises if the index is corrupt)."""
    folder = Path(folder)
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        return sorted(set(read_index(folder).values()))
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return [SAFE_WEIGHTS_NAME]
    return []


def tensor_index(folder: str | os.PathLike[str]) -> dict[str, tuple[Path, TensorInfo]]:
    """Every base tensor of a folder, name -> (file, info), from headers only.

    Raises CheckpointError when a header is corrupt, a shard is missing, or the index names a
    tensor its shard does not hold.
    """
    folder = Path(folder)
    out: dict[str, tuple[Path, TensorInfo]] = {}
    for rel in weight_files(folder):
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (named by {SAFE_WEIGHTS_INDEX_NAME})")
        header = read_header(path)
        for name, info in header.tensors.items():
            out[name] = (path, info)
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        for name, shard in read_index(folder).items():
            held = out.get(name)
            if held is None or held[0] != folder / shard:
                raise CheckpointError(
                    f"{folder / SAFE_WEIGHTS_INDEX_NAME} puts tensor {name!r} in {shard}, which does not hold it"
                )
    return out


def iter_tensor_bytes(
    path: str | os.PathLike[str], info: TensorInfo, *, chunk: int = _CHUNK_BYTES
) -> Iterator[bytes]:
    """Yield the raw bytes of one tensor in chunks (memory stays flat for multi-GB tensors)."""
    with open(path, "rb") as handle:
        handle.seek(info.start)
        left = info.nbytes
        while left > 0:
            data = handle.read(min(chunk, left))
            if not data:
                raise CheckpointError(f"{path} ends inside tensor {info.name!r} (truncated?)")
            left -= len(data)
            yield data


def tensors_sha256(items: Iterable[tuple[str, Iterable[bytes | memoryview]]]) -> str:
    """sha256 over ``name`` utf-8 bytes then raw tensor bytes, for each item (caller sorts by name)."""
    digest = hashlib.sha256()
    for name, chunks in items:
        digest.update(name.encode("utf-8"))
        for chunk in chunks:
            digest.update(chunk)
    return digest.hexdigest()


def shared_tensors_sha256(policy_dir: str | os.PathLike[str], names: Iterable[str]) -> str:
    """Hash of the tensors a reference shares with its policy, as stored in the policy's files.

    Definition (format v1): sha256 over, for each name in sorted order, the name's utf-8 bytes then
    the tensor's raw little-endian bytes as stored in the safetensors file.

    Raises:
        IntegrityError: the policy does not hold one of the tensors.
        CheckpointError: the policy's weight files are missing or corrupt.
    """
    index = tensor_index(policy_dir)
    ordered = sorted(set(names))
    missing = [n for n in ordered if n not in index]
    if missing:
        raise IntegrityError(
            f"the policy at {policy_dir} no longer holds shared tensor(s) {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
            hint="re-create the reference with 'vhctl make-ref'",
        )
    return tensors_sha256((n, iter_tensor_bytes(index[n][0], index[n][1])) for n in ordered)


def state_dict_sha256(state_dict: dict[str, Any], names: Iterable[str]) -> str:
    """The same hash as :func:`shared_tensors_sha256`, from in-memory tensors (before saving).

    safetensors stores contiguous little-endian bytes, which is what ``view(torch.uint8)`` yields on
    little-endian hosts, so both functions agree for the same tensors.
    """
    import torch

    def raw(t: torch.Tensor) -> Iterator[bytes]:
        flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        yield flat.numpy().tobytes()

    ordered = sorted(set(names))
    missing = [n for n in ordered if n not in state_dict]
    if missing:
        raise IntegrityError(f"shared tensor(s) {', '.join(missing[:5])} are not in the model")
    return tensors_sha256((n, raw(state_dict[n])) for n in ordered)
