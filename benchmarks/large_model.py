"""A GPT-2-large-shaped model on disk (774M parameters, 3.1 GB of float32), written tensor by tensor.

``save_pretrained`` would hold the whole model in memory and then serialise it; here the safetensors
header is computed from the parameter shapes of a model built on the meta device, and each tensor is
drawn (seeded, N(0, 0.02)) and written on its own, so memory stays at about one tensor (the 257 MB
embedding). The 5-shard copy takes the same tensors' bytes from the single file, byte range by byte
range, and writes the ``model.safetensors.index.json`` transformers expects.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

CONFIG = {"n_embd": 1280, "n_layer": 36, "n_head": 20}  # GPT-2 large; vocab 50257, 1024 positions
SIZES = {"124M": {"n_embd": 768, "n_layer": 12, "n_head": 12}, "774M": CONFIG}  # GPT-2 and GPT-2 large
_ALIGN = 8
_CHUNK = 16 * 1024 * 1024


def _shapes(shape: dict[str, int]) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """The config and the stored parameters' shapes (tied ``lm_head.weight`` left out, as saved)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**shape)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}  # remove_duplicate: tied once
    return config, shapes


def _header(entries: list[tuple[str, tuple[int, ...], int]]) -> bytes:
    """Length prefix + JSON header for float32 tensors ``(name, shape, nbytes)`` laid out in order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, nbytes in entries:
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % _ALIGN)
    return len(raw).to_bytes(8, "little") + raw


def _nbytes(shape: tuple[int, ...]) -> int:
    n = 4
    for d in shape:
        n *= d
    return n


def build_single(out: Path, *, seed: int = 0, shape: dict[str, int] | None = None) -> Path:
    """``out/model.safetensors`` (random weights, seeded) + ``config.json`` + ``generation_config.json``;
    GPT-2-large-shaped unless ``shape`` gives other ``GPT2Config`` sizes."""
    import torch
    from transformers import GenerationConfig

    config, shapes = _shapes(shape or CONFIG)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(shapes)
    generator = torch.Generator().manual_seed(seed)
    tmp = out / "model.safetensors.part"
    with open(tmp, "wb") as handle:
        handle.write(_header([(n, shapes[n], _nbytes(shapes[n])) for n in names]))
        for name in names:
            tensor = torch.empty(shapes[name]).normal_(0.0, 0.02, generator=generator)
            handle.write(tensor.numpy().tobytes())
            del tensor
    tmp.rename(out / "model.safetensors")
    config.save_pretrained(str(out))
    GenerationConfig.from_model_config(config).save_pretrained(str(out))
    return out


def build_sharded(single: Path, out: Path, shards: int = 5) -> Path:
    """The same tensors split into ``shards`` files of about equal size, with their index."""
    sys_path_vhctl()
    from vhctl.checkpoint.tensors import read_header

    header = read_header(single / "model.safetensors")
    names = sorted(header.tensors)
    total = sum(info.nbytes for info in header.tensors.values())
    groups: list[list[str]] = [[]]
    done = 0
    for name in names:
        if done >= total * len(groups) / shards and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        done += header.tensors[name].nbytes
    out.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    with open(single / "model.safetensors", "rb") as src:
        for i, group in enumerate(groups):
            file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            infos = [header.tensors[n] for n in group]
            with open(out / file, "wb") as handle:
                handle.write(_header([(info.name, info.shape, info.nbytes) for info in infos]))
                for info in infos:
                    src.seek(info.start)
                    left = info.nbytes
                    while left:
                        data = src.read(min(_CHUNK, left))
                        handle.write(data)
                        left -= len(data)
            weight_map.update({n: file for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    for name in ("config.json", "generation_config.json"):
        shutil.copyfile(single / name, out / name)
    return out


def sys_path_vhctl() -> None:
    """Put the repository root first on ``sys.path`` (the benchmark runs as a script from benchmarks/)."""
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
