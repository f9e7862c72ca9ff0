"""Convert a folder in a foreign format (OpenRLHF, seqcls, DeepSpeed-Chat) into a vhctl base model.

TRL layouts are not handled here: :func:`vhctl.checkpoint.heads.find_head` already reads them.
Conversion is at the tensor level: keys are renamed after :mod:`vhctl.formats.keymaps`, tensors
are written back unchanged (one file at a time, keeping the source's shards).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vhctl.constants import CONFIG_NAME, GENERATION_CONFIG_NAME
from vhctl.errors import CheckpointError
from vhctl.formats import keymaps as km
from vhctl.formats.bias import unfold
from vhctl.formats.families import LmLayout, base_prefix, causal_class, lm_layout
from vhctl.formats.layout import ForeignLayout
from vhctl.formats.normalization import NORMALIZATION_KEY, check_normalization
from vhctl.formats.weights import cast, write_json, write_weights

__all__ = ["IMPORTED_KEY", "ImportResult", "import_foreign"]

IMPORTED_KEY = "imported_from"


@dataclass
class ImportResult:
    """What :func:`import_foreign` wrote, and the head and manifest extras the caller records."""

    weight: torch.Tensor
    bias: torch.Tensor
    files: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """Which source tensor becomes which vhctl tensor, file by file."""

    groups: list[tuple[int, list[tuple[str, str]]]]  # (source file index, [(source key, vhctl key)])
    present: set[str]
    zero_keys: list[str]  # LM head tensors the format does not store: written as zeros


def _rename_plan(layout: ForeignLayout, config: Any, lm: LmLayout, fold: tuple[str, float] | None) -> _Plan:
    """Map every backbone key to its vhctl name; refuse keys the family lacks or needs."""
    where, fmt = str(layout.folder), layout.format
    base = base_prefix(config, where=where)
    head_keys = {layout.head_weight_key, layout.head_bias_key}
    plan: list[list[tuple[str, str]]] = []
    unexpected: list[str] = []
    for _, keys in layout.weights.groups:
        pairs = []
        for key in keys:
            if key in head_keys:
                continue
            mapped = km.backbone_key_to_vhctl(fmt, key, base)
            if mapped is None and key in lm.lm_head:
                mapped = key
            if mapped is None:
                unexpected.append(key)
            else:
                pairs.append((key, mapped))
        plan.append(pairs)
    present = {mapped for pairs in plan for _, mapped in pairs}
    zero_keys = [k for k in lm.lm_head if k not in present]
    if lm.expected is not None:
        missing = sorted(lm.expected - present - set(zero_keys))
        unexpected += sorted(present - lm.expected)
        if missing:
            raise CheckpointError(
                f"{where} ({fmt}) lacks {len(missing)} tensor(s) a {config.model_type} model needs: "
                f"{', '.join(missing[:5])}",
                hint="the weights were saved for another model or are incomplete",
            )
    if unexpected:
        raise CheckpointError(
            f"{where} ({fmt}) holds {len(unexpected)} tensor(s) a {config.model_type} model does not have: "
            f"{', '.join(unexpected[:5])}",
            hint="the weights were saved for another model (or with another transformers version)",
        )
    if fold is not None and fold[0] not in present:
        raise CheckpointError(
            f"{where}: {km.VHCTL_EXPORT_FIELD} names {fold[0]}, which the weights do not hold"
        )
    groups = [(i, pairs) for i, pairs in enumerate(plan) if pairs] or [(0, [])]
    return _Plan(groups, present, zero_keys)


def _write_tensors(
    layout: ForeignLayout, dest: Path, plan: _Plan, lm: LmLayout, weight: torch.Tensor,
    fold: tuple[str, float] | None, dtype: torch.dtype | None,
) -> list[str]:  # fmt: skip
    """Write the renamed tensors one source file at a time (the LM head zeros with the last one)."""

    def tensors() -> Iterator[dict[str, torch.Tensor]]:
        for n, (index, pairs) in enumerate(plan.groups):
            src = layout.weights.group_tensors(index) if pairs else {}
            out: dict[str, torch.Tensor] = {}
            for key, mapped in pairs:
                tensor = src[key]
                if fold is not None and mapped == fold[0]:
                    tensor = unfold(tensor, weight, fold[1])
                out[mapped] = cast(tensor, dtype)
            if n == len(plan.groups) - 1:
                floats = [t.dtype for t in out.values() if t.is_floating_point()]
                zero_dtype = dtype or (floats[0] if floats else torch.float32)
                for key in plan.zero_keys:
                    out[key] = torch.zeros(lm.lm_head[key][0], dtype=zero_dtype)
            yield out

    return write_weights(dest, tensors(), len(plan.groups))


def _write_config(
    layout: ForeignLayout, dest: Path, config: Any, dtype: torch.dtype | None
) -> dict[str, Any]:
    """config.json without the format's own fields (returned, to keep in the manifest), as a causal LM's."""
    cfg = dict(layout.config)
    fields = {km.OPENRLHF: km.OPENRLHF_CONFIG_FIELDS, km.SEQCLS: km.SEQCLS_CONFIG_FIELDS}.get(
        layout.format, ()
    )
    popped = {f: cfg.pop(f) for f in fields if f in cfg}
    cfg.pop(km.VHCTL_EXPORT_FIELD, None)
    popped["architectures"] = cfg.get("architectures")
    restored = layout.record.get("architectures")
    where = str(layout.folder)
    cfg["architectures"] = (
        restored if isinstance(restored, list) else [causal_class(config, where=where).__name__]
    )
    if dtype is not None:
        cfg["dtype"] = str(dtype).removeprefix("torch.")
        cfg.pop("torch_dtype", None)
    write_json(dest / CONFIG_NAME, cfg)
    return popped


def import_foreign(
    layout: ForeignLayout, dest: Path, *, config: Any, dtype: torch.dtype | None = None
) -> ImportResult:
    """Write the base model of ``layout`` into ``dest`` as a causal LM checkpoint, and return the head.

    Args:
        layout: from :func:`vhctl.formats.registry.detect_foreign_layout`.
        dest: an empty folder (the temporary output of ``wrap``).
        config: the transformers config of the source (decides the family's key names).
        dtype: cast floating-point base tensors (``None`` keeps them as stored).

    An LM head the format does not store (every one of them drops it) is written as zeros when the
    family does not tie it to the input embeddings; the result's notes say so.

    Raises:
        CheckpointError: the weights hold keys the family does not have, or lack some it needs.
    """
    lm = lm_layout(config, where=str(layout.folder))
    weight, bias = layout.head()
    fold = layout.norm_fold()
    plan = _rename_plan(layout, config, lm, fold)
    files = _write_tensors(layout, dest, plan, lm, weight, fold, dtype)
    popped = _write_config(layout, dest, config, dtype)
    files.append(CONFIG_NAME)
    if (layout.folder / GENERATION_CONFIG_NAME).is_file():
        shutil.copyfile(layout.folder / GENERATION_CONFIG_NAME, dest / GENERATION_CONFIG_NAME)
        files.append(GENERATION_CONFIG_NAME)

    fmt = layout.format
    lm_state = (
        "zeros" if plan.zero_keys else ("kept" if any(k in plan.present for k in lm.lm_head) else "tied")
    )
    extra: dict[str, Any] = {
        IMPORTED_KEY: {"format": fmt, "config": _jsonable(popped), "lm_head": lm_state,
                       "head_key": layout.head_weight_key},
    }  # fmt: skip
    normalization = _normalization(layout, weight, popped)
    if normalization is not None:
        extra[NORMALIZATION_KEY] = {"mean": normalization[0], "std": normalization[1]}
    notes = []
    if plan.zero_keys:
        notes.append(
            f"{fmt} checkpoints hold no LM head: {', '.join(plan.zero_keys)} written as zeros "
            "(backbone and value head are exact; the model's LM logits are not meaningful)"
        )
    if fold is not None:
        notes.append(f"the head bias {fold[1]} folded into {fold[0]} at export was moved back into the head")
    return ImportResult(weight, bias, sorted(files), extra, notes)


def _normalization(
    layout: ForeignLayout, weight: torch.Tensor, popped: dict[str, Any]
) -> tuple[float, float] | None:
    rec = layout.record
    where = f"{layout.folder}/{CONFIG_NAME}"
    if NORMALIZATION_KEY in rec and (rec.get("bias") != km.BIAS_MEAN or layout.record_matches(weight)):
        entry = rec[NORMALIZATION_KEY]
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where}: {km.VHCTL_EXPORT_FIELD}.{NORMALIZATION_KEY} must be an object")
        return check_normalization(entry.get("mean"), entry.get("std"), where=where)
    if layout.format == km.OPENRLHF and popped.get("mean") is not None and popped.get("std") is not None:
        return check_normalization(popped["mean"], popped["std"], where=where)
    return None


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))
