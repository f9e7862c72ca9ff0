"""OpenRLHF critics and reward models: ``{base}.*`` plus a bias-free ``<value_head_prefix>`` Linear.

The config carries ``value_head_prefix``, ``normalize_reward``, ``mean`` and ``std``; a reward
model's mean/std travel into the manifest on import (``vhctl score --normalize`` applies them).
"""

from __future__ import annotations

from typing import Any

from vhctl.errors import CheckpointError, UnsupportedModelError
from vhctl.formats import keymaps as km
from vhctl.formats.base import ExportJob, FolderFacts, FormatSpec
from vhctl.formats.exporting import (
    finish_headless,
    restored_config,
    start_config,
    write_headless,
)
from vhctl.formats.importing import IMPORTED_KEY
from vhctl.formats.layout import ForeignLayout
from vhctl.formats.normalization import normalization_of

__all__ = ["FORMAT", "detect", "export"]


def _layout(facts: FolderFacts, key: str) -> ForeignLayout:
    return ForeignLayout(
        format=km.OPENRLHF, title=FORMAT.title, folder=facts.folder, config=facts.config, weights=facts.weights,
        head_weight_key=key,
    )  # fmt: skip


def detect(facts: FolderFacts) -> ForeignLayout | None:
    """An OpenRLHF config (or an old-style bias-free ``value_head``) with its head in the weights."""
    config, keys = facts.config, facts.keys
    prefix = config.get("value_head_prefix")
    marked = (
        isinstance(prefix, str)
        or "normalize_reward" in config
        or any(a in km.OPENRLHF_ARCHITECTURES for a in facts.archs)
    )
    if marked:
        candidates = [prefix] if isinstance(prefix, str) else list(km.OPENRLHF_HEAD_PREFIXES)
        for cand in candidates:
            key = km.head_weight_key(km.OPENRLHF, value_head_prefix=cand)
            if key in keys:
                return _layout(facts, key)
        raise CheckpointError(
            f"{facts.folder} has an OpenRLHF config but its weights hold no "
            f"{' or '.join(c + '.weight' for c in candidates)}",
            hint="check value_head_prefix in config.json",
        )
    old = km.head_weight_key(km.OPENRLHF, value_head_prefix="value_head")
    if old in keys and "value_head.bias" not in keys:
        return _layout(facts, old)
    return None


def _prefix(job: ExportJob, restored: dict[str, Any]) -> str:
    """The head's name: asked for, else the one an import recorded, else OpenRLHF's default."""
    extra = job.manifest.extra if isinstance(job.manifest.extra, dict) else {}
    imported = extra.get(IMPORTED_KEY)
    imported_key = imported.get("head_key") if isinstance(imported, dict) and restored else None
    imported_prefix = imported_key.removesuffix(".weight") if isinstance(imported_key, str) else None
    return str(
        job.value_head_prefix
        or restored.get("value_head_prefix")
        or imported_prefix
        or km.OPENRLHF_DEFAULT_PREFIX
    )


def export(job: ExportJob) -> None:
    """Write ``job`` as an OpenRLHF model (``get_llm_for_sequence_regression`` loads it)."""
    from transformers import AutoModel

    where, config = job.result.source, job.config
    if getattr(config, "hidden_size", None) != job.hidden:
        raise UnsupportedModelError(
            f"{where}: OpenRLHF sizes its head by config.hidden_size ({getattr(config, 'hidden_size', None)}), "
            f"but this model's last hidden state has {job.hidden} features",
            hint="export it with --format trl or --format seqcls",
        )
    if type(config) not in AutoModel._model_mapping:
        raise UnsupportedModelError(f"{where}: transformers has no AutoModel class for {config.model_type}")
    restored = restored_config(job, km.OPENRLHF)
    prefix = _prefix(job, restored)
    done = write_headless(job, km.OPENRLHF, km.head_weight_key(km.OPENRLHF, value_head_prefix=prefix))
    cfg = start_config(job, done, restored)
    archs = cfg.get("architectures")
    if not (isinstance(archs, list) and any(a in km.OPENRLHF_ARCHITECTURES for a in archs)):
        cfg["architectures"] = [km.OPENRLHF_DEFAULT_ARCHITECTURE]
    cfg["value_head_prefix"] = prefix
    cfg.setdefault("normalize_reward", False)
    normalization = normalization_of(job.manifest)
    if normalization is not None:
        cfg["mean"], cfg["std"] = normalization
    if done.bias_mode == km.BIAS_MEAN:
        mean, std = normalization if normalization is not None else (0.0, 1.0)
        # OpenRLHF returns (r - mean) / std with r = w . h = value - bias: shift the mean by the bias.
        cfg["mean"], cfg["std"], cfg["normalize_reward"] = mean - done.bias, std, True
    finish_headless(job, km.OPENRLHF, cfg, done, [])


FORMAT = FormatSpec(
    name=km.OPENRLHF,
    title="an OpenRLHF",
    detect=detect,
    export=export,
    hint="get_llm_for_sequence_regression('{out}', 'critic')  (openrlhf.models)",
)
