"""Interop with the formats RLHF stacks use for critics and reward models.

- :func:`export_checkpoint`: a vhctl checkpoint as TRL, OpenRLHF or ``*ForSequenceClassification``.
- :func:`detect_foreign_layout` / :func:`import_foreign`: OpenRLHF, seqcls and DeepSpeed-Chat
  folders into vhctl (``vhctl wrap`` calls them; TRL layouts are read by the core loader).
- :func:`read_reward_head`: a reward model's head for ``wrap --init-from-reward``.
- :func:`normalization_of`: the OpenRLHF reward mean/std a checkpoint carries.

The key maps of every format are in :mod:`vhctl.formats.keymaps`. Names load lazily so that
importing the key maps (CLI help) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "ExportResult",
    "ForeignLayout",
    "ImportResult",
    "RewardHead",
    "detect_foreign_layout",
    "export_checkpoint",
    "import_foreign",
    "normalization_of",
    "normalize",
    "read_reward_head",
]

_LAZY = {
    "ExportResult": "vhctl.formats.exporter",
    "export_checkpoint": "vhctl.formats.exporter",
    "ForeignLayout": "vhctl.formats.importer",
    "ImportResult": "vhctl.formats.importer",
    "detect_foreign_layout": "vhctl.formats.importer",
    "import_foreign": "vhctl.formats.importer",
    "RewardHead": "vhctl.formats.reward",
    "read_reward_head": "vhctl.formats.reward",
    "normalization_of": "vhctl.formats.normalization",
    "normalize": "vhctl.formats.normalization",
}

if TYPE_CHECKING:
    from vhctl.formats.exporter import ExportResult, export_checkpoint
    from vhctl.formats.importer import ForeignLayout, ImportResult, detect_foreign_layout, import_foreign
    from vhctl.formats.normalization import normalization_of, normalize
    from vhctl.formats.reward import RewardHead, read_reward_head


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vhctl.formats' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
