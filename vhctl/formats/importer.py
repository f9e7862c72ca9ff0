"""Recognise OpenRLHF, sequence-classification and DeepSpeed-Chat folders, and convert them.

TRL layouts are not handled here: :func:`vhctl.checkpoint.heads.find_head` already reads them.
Conversion is at the tensor level: keys are renamed after :mod:`vhctl.formats.keymaps`, tensors
are written back unchanged (one file at a time, keeping the source's shards).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vhctl.constants import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    MANIFEST_NAME,
    V_HEAD_PREFIX,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, UnsupportedModelError
from vhctl.formats import keymaps as km
from vhctl.formats._bias import head_fingerprint, unfold
from vhctl.formats._weights import WeightSet, cast, read_weight_set, write_json, write_weights
from vhctl.formats.normalization import NORMALIZATION_KEY, check_normalization

IMPORTED_KEY = "imported_from"


@dataclass
class ForeignLayout:
    """A folder in one of the foreign formats, with its config and (lazily read) weights."""

    format: str
    folder: Path
    config: dict[str, Any]
    weights: WeightSet
    head_weight_key: str
    head_bias_key: str | None = None

    @property
    def record(self) -> dict[str, Any]:
        """What vhctl wrote into the config when it exported this folder (empty if it did not)."""
        rec = self.config.get(km.VHCTL_EXPORT_FIELD)
        return rec if isinstance(rec, dict) else {}

    def record_matches(self, weight: torch.Tensor) -> bool:
        """True when the head is still the one vhctl exported (not retrained since)."""
        return bool(self.record) and self.record.get("head_sha256") == head_fingerprint(weight)

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The head as vhctl sees it: weight (1, hidden) and bias (1,).

        The bias is the format's own when it has one; else the bias vhctl recorded at export, as long
        as the head is the one vhctl exported. A head trained since keeps a zero bias: a bias folded
        into the final norm then stays there, so the model's scores are kept bit for bit (unfolding
        it with the new weights would be exact only up to float rounding of the norm's bias).
        """
        weight = self.weights.get(self.head_weight_key)
        where = f"{self.folder} ({self.head_weight_key})"
        if weight.dim() != 2 or weight.shape[0] != 1:
            raise UnsupportedModelError(
                f"{where} has shape {tuple(weight.shape)}: a value head has one output (num_labels=1)",
                hint="only scalar reward models and critics can become a value head",
            )
        if not weight.is_floating_point():
            raise CheckpointError(f"{where} is not floating point ({weight.dtype})")
        if self.head_bias_key is not None:
            bias = self.weights.get(self.head_bias_key).reshape(-1)
            if bias.shape != (1,):
                raise CheckpointError(f"{self.folder} ({self.head_bias_key}) has shape {tuple(bias.shape)}, not (1,)")
            return weight, bias.to(weight.dtype)
        value = 0.0
        mode = self.record.get("bias")
        if mode in (km.BIAS_NORM, km.BIAS_MEAN, km.BIAS_CONFIG) and self.record_matches(weight):
            value = _as_float(self.record.get("value_head_bias"), where=f"{self.folder}/{CONFIG_NAME}")
        return weight, torch.tensor([value], dtype=weight.dtype)

    def norm_fold(self) -> tuple[str, float] | None:
        """(norm bias key, bias) when vhctl folded the head bias into the final norm at export and
        the head is still the one it exported (see :meth:`head`)."""
        rec = self.record
        key = rec.get("norm_bias_key")
        if rec.get("bias") == km.BIAS_NORM and isinstance(key, str) and self.record_matches(
            self.weights.get(self.head_weight_key)
        ):
            return key, _as_float(rec.get("value_head_bias"), where=f"{self.folder}/{CONFIG_NAME}")
        return None


def _as_float(value: Any, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(f"{where}: {km.VHCTL_EXPORT_FIELD}.value_head_bias must be a number, got {value!r}")
    return float(value)


def _read_config(folder: Path) -> dict[str, Any]:
    from vhctl.checkpoint.config import read_config_dict

    return read_config_dict(folder)


def detect_foreign_layout(folder: str | Path, *, allow_pickle: bool = False) -> ForeignLayout | None:
    """Which foreign format ``folder`` is in (OpenRLHF, seqcls, DeepSpeed-Chat), or None.

    None for vhctl checkpoints, TRL layouts, plain models and anything else; also for pickle-only
    folders when ``allow_pickle`` is False (the caller's pickle policy then applies). Only
    safetensors headers are read; a pickle is read (``weights_only=True``) only when allowed.

    Raises:
        UnsupportedModelError: a sequence classifier whose head is not one ``score`` output.
        CheckpointError: an OpenRLHF config naming a head its weights do not hold; corrupt files.
    """
    from vhctl.checkpoint.tensors import has_pickle_weights, has_safetensors_weights

    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file() or (folder / VALUE_HEAD_NAME).is_file():
        return None
    if not (folder / CONFIG_NAME).is_file():
        return None
    if not has_safetensors_weights(folder) and not (allow_pickle and has_pickle_weights(folder)):
        return None
    config = _read_config(folder)
    weights = read_weight_set(folder, allow_pickle=allow_pickle)
    keys = set(weights.keys())
    if any(k.startswith(V_HEAD_PREFIX + "summary.") for k in keys):
        return None  # TRL
    archs = [a for a in (config.get("architectures") or []) if isinstance(a, str)]

    if km.DEEPSPEED_CHAT_HEAD_WEIGHT in keys and any(k.startswith(km.DEEPSPEED_CHAT_PREFIXES) for k in keys):
        return ForeignLayout(km.DEEPSPEED_CHAT, folder, config, weights, km.DEEPSPEED_CHAT_HEAD_WEIGHT)

    prefix = config.get("value_head_prefix")
    openrlhf_marked = (
        isinstance(prefix, str) or "normalize_reward" in config or any(a in km.OPENRLHF_ARCHITECTURES for a in archs)
    )
    if openrlhf_marked:
        candidates = [prefix] if isinstance(prefix, str) else list(km.OPENRLHF_HEAD_PREFIXES)
        for cand in candidates:
            key = km.head_weight_key(km.OPENRLHF, value_head_prefix=cand)
            if key in keys:
                return ForeignLayout(km.OPENRLHF, folder, config, weights, key)
        raise CheckpointError(
            f"{folder} has an OpenRLHF config but its weights hold no "
            f"{' or '.join(c + '.weight' for c in candidates)}",
            hint="check value_head_prefix in config.json",
        )
    old = km.head_weight_key(km.OPENRLHF, value_head_prefix="value_head")
    if old in keys and "value_head.bias" not in keys:
        return ForeignLayout(km.OPENRLHF, folder, config, weights, old)
    if km.SEQCLS_HEAD_WEIGHT in keys:
        bias_key = km.SEQCLS_HEAD_BIAS if km.SEQCLS_HEAD_BIAS in keys else None
        return ForeignLayout(km.SEQCLS, folder, config, weights, km.SEQCLS_HEAD_WEIGHT, bias_key)
    if any(a.endswith(km.SEQCLS_ARCH_SUFFIX) for a in archs):
        raise UnsupportedModelError(
            f"{folder} is a {archs[0]} whose classifier is not a single 'score' layer",
            hint="vhctl imports sequence classifiers with a Linear 'score' head (causal LMs: Llama, GPT-2...)",
        )
    return None


@dataclass
class ImportResult:
    """What :func:`import_foreign` wrote, and the head and manifest extras the caller records."""

    weight: torch.Tensor
    bias: torch.Tensor
    files: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def import_foreign(
    layout: ForeignLayout, dest: Path, *, config: Any, dtype: torch.dtype | None = None
) -> ImportResult:
    """Write the base model of ``layout`` into ``dest`` as a causal LM checkpoint, and return the head.

    Args:
        layout: from :func:`detect_foreign_layout`.
        dest: an empty folder (the temporary output of ``wrap``).
        config: the transformers config of the source (decides the family's key names).
        dtype: cast floating-point base tensors (``None`` keeps them as stored).

    An LM head the format does not store (every one of them drops it) is written as zeros when the
    family does not tie it to the input embeddings; the result's notes say so.

    Raises:
        CheckpointError: the weights hold keys the family does not have, or lack some it needs.
    """
    from vhctl.formats._model import base_prefix, causal_class, lm_layout

    where = str(layout.folder)
    fmt = layout.format
    base = base_prefix(config, where=where)
    lm = lm_layout(config, where=where)
    weight, bias = layout.head()
    fold = layout.norm_fold()

    head_keys = {layout.head_weight_key, layout.head_bias_key}
    plan: list[list[tuple[str, str]]] = []  # per group: (source key, vhctl key)
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
        raise CheckpointError(f"{where}: {km.VHCTL_EXPORT_FIELD} names {fold[0]}, which the weights do not hold")

    groups = [(i, pairs) for i, pairs in enumerate(plan) if pairs] or [(0, [])]

    def tensors() -> Any:
        for n, (index, pairs) in enumerate(groups):
            src = layout.weights.group_tensors(index) if pairs else {}
            out: dict[str, torch.Tensor] = {}
            for key, mapped in pairs:
                tensor = src[key]
                if fold is not None and mapped == fold[0]:
                    tensor = unfold(tensor, weight, fold[1])
                out[mapped] = cast(tensor, dtype)
            if n == len(groups) - 1:
                floats = [t.dtype for t in out.values() if t.is_floating_point()]
                zero_dtype = dtype or (floats[0] if floats else torch.float32)
                for key in zero_keys:
                    out[key] = torch.zeros(lm.lm_head[key][0], dtype=zero_dtype)
            yield out

    files = write_weights(dest, tensors(), len(groups))

    cfg = dict(layout.config)
    fields = {km.OPENRLHF: km.OPENRLHF_CONFIG_FIELDS, km.SEQCLS: km.SEQCLS_CONFIG_FIELDS}.get(fmt, ())
    popped = {f: cfg.pop(f) for f in fields if f in cfg}
    cfg.pop(km.VHCTL_EXPORT_FIELD, None)
    popped["architectures"] = cfg.get("architectures")
    restored = layout.record.get("architectures")
    cfg["architectures"] = restored if isinstance(restored, list) else [causal_class(config, where=where).__name__]
    if dtype is not None:
        cfg["dtype"] = str(dtype).removeprefix("torch.")
        cfg.pop("torch_dtype", None)
    write_json(dest / CONFIG_NAME, cfg)
    files.append(CONFIG_NAME)
    if (layout.folder / GENERATION_CONFIG_NAME).is_file():
        shutil.copyfile(layout.folder / GENERATION_CONFIG_NAME, dest / GENERATION_CONFIG_NAME)
        files.append(GENERATION_CONFIG_NAME)

    lm_state = "zeros" if zero_keys else ("kept" if any(k in present for k in lm.lm_head) else "tied")
    extra: dict[str, Any] = {
        IMPORTED_KEY: {"format": fmt, "config": _jsonable(popped), "lm_head": lm_state,
                       "head_key": layout.head_weight_key},
    }
    normalization = _normalization(layout, weight, popped)
    if normalization is not None:
        extra[NORMALIZATION_KEY] = {"mean": normalization[0], "std": normalization[1]}
    notes = []
    if zero_keys:
        notes.append(
            f"{fmt} checkpoints hold no LM head: {', '.join(zero_keys)} written as zeros "
            "(backbone and value head are exact; the model's LM logits are not meaningful)"
        )
    if fold is not None:
        notes.append(f"the head bias {fold[1]} folded into {fold[0]} at export was moved back into the head")
    return ImportResult(weight, bias, sorted(files), extra, notes)


def _normalization(layout: ForeignLayout, weight: torch.Tensor, popped: dict[str, Any]) -> tuple[float, float] | None:
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


__all__ = ["ForeignLayout", "ImportResult", "detect_foreign_layout", "import_foreign"]
