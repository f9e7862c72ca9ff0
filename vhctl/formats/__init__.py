"""Interop with the formats RLHF stacks use for critics and reward models.

- exporters: a vhctl checkpoint as TRL, OpenRLHF or ``*ForSequenceClassification``, each format's
  ``export`` in :data:`FORMATS` (the operation that runs them is :func:`vhctl.ops.export.export_checkpoint`).
- :func:`detect_foreign_layout` / :func:`import_foreign`: OpenRLHF, seqcls and DeepSpeed-Chat
  folders into vhctl (``vhctl wrap`` calls them; TRL layouts are read by the core loader).
- :func:`read_reward_head`: a reward model's head for ``wrap --init-from-reward``.
- :func:`normalization_of`: the OpenRLHF reward mean/std a checkpoint carries.

One module per format (:mod:`~vhctl.formats.trl`, :mod:`~vhctl.formats.openrlhf`,
:mod:`~vhctl.formats.seqcls`, :mod:`~vhctl.formats.deepspeed_chat`), listed in
:mod:`vhctl.formats.registry`; every format's key map is in :mod:`vhctl.formats.keymaps`.
"""

from __future__ import annotations

from vhctl.formats.base import ExportResult, FormatSpec
from vhctl.formats.importing import ImportResult, import_foreign
from vhctl.formats.layout import ForeignLayout
from vhctl.formats.normalization import normalization_of, normalize
from vhctl.formats.registry import FORMATS, detect_foreign_layout, format_spec
from vhctl.formats.reward import RewardHead, read_reward_head

__all__ = [
    "FORMATS",
    "ExportResult",
    "ForeignLayout",
    "FormatSpec",
    "ImportResult",
    "RewardHead",
    "detect_foreign_layout",
    "format_spec",
    "import_foreign",
    "normalization_of",
    "normalize",
    "read_reward_head",
]
