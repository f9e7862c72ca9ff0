"""The pieces every format module shares: what a format is, what detection sees, what export writes.

A format is a :class:`FormatSpec`: its name and title, how to recognise a folder in it (import),
how to write a checkpoint in it (export), and how to load an export (the CLI's hint). The registry
(:mod:`vhctl.formats.registry`) lists them; adding a format is one module with a ``FORMAT``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from vhctl.checkpoint.manifest import Manifest
    from vhctl.formats.layout import ForeignLayout
    from vhctl.formats.weights import WeightSet

__all__ = ["ExportJob", "ExportResult", "FolderFacts", "FormatSpec"]


@dataclass(frozen=True)
class FolderFacts:
    """What detection looks at: a model folder's config, its weights' keys (headers only) and architectures."""

    folder: Path
    config: dict[str, Any]
    weights: WeightSet
    keys: frozenset[str]
    archs: tuple[str, ...]


@dataclass
class ExportResult:
    """What an export wrote.

    ``bias`` says how the head's bias was kept: ``native`` (TRL), ``zero`` (nothing to keep),
    ``norm`` (folded into ``norm_bias_key``), ``mean`` (folded into the OpenRLHF reward mean) or
    ``config`` (recorded in config.json only).
    """

    out: Path
    format: str
    source: str
    architecture: str
    model_type: str
    bias: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    norm_bias_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


@dataclass
class ExportJob:
    """Everything an exporter needs about the checkpoint it writes (its files are read lazily)."""

    src: Path
    dst: Path
    weights: WeightSet
    head: dict[str, torch.Tensor]
    config: Any
    manifest: Manifest
    hidden: int
    bias_mode: str
    value_head_prefix: str | None
    keep_shards: bool
    result: ExportResult
    pad_token: str = "auto"


@dataclass(frozen=True)
class FormatSpec:
    """One foreign format.

    Attributes:
        name: the ``--format`` value and the key of :data:`vhctl.formats.keymaps.KEYMAPS`.
        title: how messages name a checkpoint in it, with its article ("an OpenRLHF").
        detect: recognises a folder in this format (None: not an import format, or handled elsewhere).
        export: writes a checkpoint in this format (None: import only).
        hint: how to load an export, ``{out}`` standing for the folder (shown by the CLI).
    """

    name: str
    title: str
    detect: Callable[[FolderFacts], ForeignLayout | None] | None = None
    export: Callable[[ExportJob], None] | None = None
    hint: str = ""
