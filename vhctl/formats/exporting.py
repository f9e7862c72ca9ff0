"""What the exporters share: side files, the head-bias plan and the bias-free ("headless") layout.

OpenRLHF and ``*ForSequenceClassification`` both keep the backbone under ``base_model_prefix`` and
the head as one bias-free Linear; :func:`write_headless` writes that part, their modules write
their config. Tensors are copied bit for bit; a head bias the format cannot hold is kept as
``--bias`` says (see :mod:`vhctl.formats.bias`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vhctl._version import __version__
from vhctl.checkpoint.tensors import TensorInfo, read_header
from vhctl.checkpoint.tokenizer import copy_tokenizer_files
from vhctl.constants import ADAPTERS_DIR, CONFIG_NAME, GENERATION_CONFIG_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT
from vhctl.dtypes import dtype_name
from vhctl.errors import UnsupportedModelError
from vhctl.formats import keymaps as km
from vhctl.formats.base import ExportJob
from vhctl.formats.bias import fold, foldable_key, head_fingerprint
from vhctl.formats.families import base_prefix
from vhctl.formats.importing import IMPORTED_KEY
from vhctl.formats.normalization import NORMALIZATION_KEY, normalization_of
from vhctl.formats.weights import WeightSet, write_json, write_weights

__all__ = [
    "Headless",
    "copy_adapters",
    "copy_side_files",
    "export_record",
    "finish_headless",
    "start_config",
    "restored_config",
    "write_headless",
]


def copy_side_files(src: Path, dst: Path, *, generation: bool = True) -> list[str]:
    """Tokenizer files (and the generation config) next to the exported model."""
    files = copy_tokenizer_files(src, dst)
    if generation and (src / GENERATION_CONFIG_NAME).is_file():
        shutil.copyfile(src / GENERATION_CONFIG_NAME, dst / GENERATION_CONFIG_NAME)
        files.append(GENERATION_CONFIG_NAME)
    return files


def copy_adapters(src: Path, dst: Path) -> list[str]:
    """Reward adapters stay next to the model (TRL takes them by path: ``reward_adapter=...``)."""
    if not (src / ADAPTERS_DIR).is_dir():
        return []
    shutil.copytree(src / ADAPTERS_DIR, dst / ADAPTERS_DIR)
    return sorted(p.relative_to(dst).as_posix() for p in (dst / ADAPTERS_DIR).rglob("*") if p.is_file())


def restored_config(job: ExportJob, fmt: str) -> dict[str, Any]:
    """Config fields an import from ``fmt`` set aside (so that a round trip gives the same config)."""
    extra = job.manifest.extra if isinstance(job.manifest.extra, dict) else {}
    imported = extra.get(IMPORTED_KEY)
    if (
        isinstance(imported, dict)
        and imported.get("format") == fmt
        and isinstance(imported.get("config"), dict)
    ):
        return dict(imported["config"])
    return {}


def _bias_plan(job: ExportJob, fmt: str, bias: float, keys: list[str]) -> tuple[str, str | None]:
    """How to keep a head bias the format's head cannot hold: (mode, norm bias key)."""
    if bias == 0.0:
        return "zero", None
    model_type = str(job.config.model_type)
    norm_key = foldable_key(model_type, keys)
    if job.bias_mode in (km.BIAS_AUTO, km.BIAS_NORM) and norm_key is not None:
        return km.BIAS_NORM, norm_key
    if job.bias_mode in (km.BIAS_MEAN, km.BIAS_CONFIG):
        return job.bias_mode, None
    options = (
        "--bias mean (exact normalised rewards: OpenRLHF run with normalize_reward) or "
        if fmt == km.OPENRLHF
        else ""
    )
    raise UnsupportedModelError(
        f"the value head of {job.result.source} has bias {bias}, which the {fmt} format cannot hold exactly for a "
        f"{model_type} model: its head has no bias"
        f"{' and its final norm none to fold it into' if norm_key is None else ''}",
        hint=f"pass {options}--bias config (kept in config.json; the model's raw scores are value - bias)",
    )


@dataclass
class Headless:
    """What :func:`write_headless` did: the files, the LM-head tensors left out, how the bias was kept."""

    files: list[str]
    dropped: list[str]
    bias: float
    bias_mode: str
    norm_key: str | None


def write_headless(job: ExportJob, fmt: str, head_key: str) -> Headless:
    """The backbone under ``base_model_prefix`` and the head as ``head_key`` (1, hidden), no bias."""
    where = job.result.source
    base = base_prefix(job.config, where=where)
    weight = job.head[V_HEAD_WEIGHT]
    bias = float(job.head[V_HEAD_BIAS].reshape(-1)[0])
    plan: list[list[tuple[str, str]]] = []
    dropped: list[str] = []
    for _, keys in job.weights.groups:
        pairs = []
        for key in keys:
            mapped = km.vhctl_key_to_backbone(fmt, key, base)
            if mapped is None:
                dropped.append(key)
            else:
                pairs.append((key, mapped))
        plan.append(pairs)
    kept = [mapped for pairs in plan for _, mapped in pairs]
    if head_key in kept:
        raise UnsupportedModelError(f"{where}: the backbone already has a tensor named {head_key}")
    bias_mode, norm_key = _bias_plan(job, fmt, bias, kept)
    groups = [(i, pairs) for i, pairs in enumerate(plan) if pairs]
    head_group = len(groups) - 1
    if norm_key is not None:
        head_group = next(n for n, (_, pairs) in enumerate(groups) if any(m == norm_key for _, m in pairs))

    def tensors() -> Iterator[dict[str, torch.Tensor]]:
        for n, (index, pairs) in enumerate(groups):
            src_tensors = job.weights.group_tensors(index)
            out = {}
            for key, mapped in pairs:
                tensor = src_tensors[key]
                if mapped == norm_key:
                    tensor = fold(tensor, weight, bias, key=norm_key)
                out[mapped] = tensor
            if n == head_group:
                out[head_key] = weight
            yield out

    files = write_weights(job.dst, tensors(), len(groups))
    job.result.bias, job.result.norm_bias_key = bias_mode, norm_key
    return Headless(files, dropped, bias, bias_mode, norm_key)


def export_record(job: ExportJob, cfg: dict[str, Any], done: Headless) -> dict[str, Any]:
    """What vhctl writes into an exported config.json so that importing it again is exact."""
    normalization = normalization_of(job.manifest)
    record: dict[str, Any] = {
        "vhctl_version": __version__,
        "value_head_bias": done.bias,
        "bias": done.bias_mode,
        "head_sha256": head_fingerprint(job.head[V_HEAD_WEIGHT]),
        "architectures": cfg.get("architectures"),
        NORMALIZATION_KEY: {"mean": normalization[0], "std": normalization[1]} if normalization else None,
    }
    if done.norm_key is not None:
        record["norm_bias_key"] = done.norm_key
    return record


def _infos(weights: WeightSet) -> list[TensorInfo]:
    """Header info of the backbone tensors (dtype checks without reading data)."""
    if weights.pickle:
        return []
    out: list[TensorInfo] = []
    for rel, _ in weights.groups:
        out.extend(read_header(weights.folder / rel).tensors.values())
    return out


def finish_headless(job: ExportJob, fmt: str, cfg: dict[str, Any], done: Headless, notes: list[str]) -> None:
    """Write config.json and the side files; record the files and every note in the result."""
    write_json(job.dst / CONFIG_NAME, cfg)
    files = [*done.files, CONFIG_NAME, *copy_side_files(job.src, job.dst, generation=False)]
    result = job.result
    result.files = sorted(files)
    if done.dropped:
        result.notes.append(
            f"the {fmt} format has no LM head: {', '.join(done.dropped)} left out (the value head and backbone "
            "are exact)"
        )
    bias = done.bias
    if done.bias_mode == km.BIAS_NORM:
        result.notes.append(
            f"head bias {bias} folded into {done.norm_key}: raw {fmt} scores equal vhctl values"
        )
    elif done.bias_mode == km.BIAS_MEAN:
        result.notes.append(
            f"head bias {bias} folded into the reward mean (normalize_reward=true): OpenRLHF's normalised "
            "rewards equal vhctl's (normalised) values; its raw rewards are value - bias"
        )
    elif done.bias_mode == km.BIAS_CONFIG:
        result.notes.append(
            f"head bias {bias} kept in config.json only: raw {fmt} scores are value - {bias}; vhctl re-imports it "
            "exactly"
        )
    result.notes.extend(notes)
    weight = job.head[V_HEAD_WEIGHT]
    floats = {t.dtype_name for t in _infos(job.weights) if t.is_float}
    if len(floats) == 1 and (dtype := floats.pop()) != dtype_name(weight.dtype):
        result.notes.append(
            f"the head is stored as {dtype_name(weight.dtype)} next to a {dtype} backbone; "
            f"loading the model in {dtype} rounds it"
        )


def start_config(job: ExportJob, done: Headless, restored: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's config.json with the export record and the fields an import set aside."""
    cfg: dict[str, Any] = json.loads((job.src / CONFIG_NAME).read_text(encoding="utf-8"))
    record = export_record(job, cfg, done)
    for name in ("architectures", *km.SEQCLS_CONFIG_FIELDS, *km.OPENRLHF_CONFIG_FIELDS):
        if name in restored and restored[name] is not None:
            cfg[name] = restored[name]
    cfg[km.VHCTL_EXPORT_FIELD] = record
    return cfg
