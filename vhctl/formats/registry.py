"""Every format vhctl converts, by name, and the detection of a foreign folder.

Detection tries the formats in this order (the first that recognises a folder wins); a new format
is a module with a ``FORMAT`` (see :class:`vhctl.formats.base.FormatSpec`) added to the tuple.
"""

from __future__ import annotations

from pathlib import Path

from vhctl.checkpoint.config import read_config_dict
from vhctl.checkpoint.tensors import has_pickle_weights, has_safetensors_weights
from vhctl.constants import CONFIG_NAME, MANIFEST_NAME, V_HEAD_PREFIX, VALUE_HEAD_NAME
from vhctl.errors import UsageError
from vhctl.formats import deepspeed_chat, openrlhf, seqcls, trl
from vhctl.formats.base import FolderFacts, FormatSpec
from vhctl.formats.layout import ForeignLayout
from vhctl.formats.weights import read_weight_set

__all__ = ["FORMATS", "detect_foreign_layout", "format_spec"]

FORMATS: dict[str, FormatSpec] = {
    spec.name: spec for spec in (trl.FORMAT, deepspeed_chat.FORMAT, openrlhf.FORMAT, seqcls.FORMAT)
}


def format_spec(name: str, *, exporting: bool = False) -> FormatSpec:
    """The format called ``name`` (one that can export, when ``exporting``)."""
    spec = FORMATS.get(name)
    if spec is None or (exporting and spec.export is None):
        names = [n for n, s in FORMATS.items() if not exporting or s.export is not None]
        raise UsageError(f"unknown export format {name!r}", hint=f"use one of: {', '.join(names)}")
    return spec


def detect_foreign_layout(folder: str | Path, *, allow_pickle: bool = False) -> ForeignLayout | None:
    """Which foreign format ``folder`` is in (OpenRLHF, seqcls, DeepSpeed-Chat), or None.

    None for vhctl checkpoints, TRL layouts, plain models and anything else; also for pickle-only
    folders when ``allow_pickle`` is False (the caller's pickle policy then applies). Only
    safetensors headers are read; a pickle is read (``weights_only=True``) only when allowed.

    Raises:
        UnsupportedModelError: a sequence classifier whose head is not one ``score`` output.
        CheckpointError: an OpenRLHF config naming a head its weights do not hold; corrupt files.
    """
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file() or (folder / VALUE_HEAD_NAME).is_file():
        return None
    if not (folder / CONFIG_NAME).is_file():
        return None
    if not has_safetensors_weights(folder) and not (allow_pickle and has_pickle_weights(folder)):
        return None
    config = read_config_dict(folder)
    weights = read_weight_set(folder, allow_pickle=allow_pickle)
    keys = frozenset(weights.keys())
    if any(k.startswith(V_HEAD_PREFIX + "summary.") for k in keys):
        return None  # TRL: the core loader reads it
    archs = tuple(a for a in (config.get("architectures") or []) if isinstance(a, str))
    facts = FolderFacts(folder, config, weights, keys, archs)
    for spec in FORMATS.values():
        found = spec.detect(facts) if spec.detect is not None else None
        if found is not None:
            return found
    return None
