"""Where a loaded value-head model came from: what ``save_pretrained`` records in the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Provenance"]


@dataclass
class Provenance:
    """One record of a model's origin, kept on the model as ``model.provenance``.

    Attributes:
        source: the base model's name (hub id or path) as the manifest records it.
        revision: the hub revision of the base, when known.
        folder: the local folder it was loaded from (tokenizer files are copied from there on save).
        head_init: how the value head was made: ``random``, ``normal`` or ``loaded``.
        head_std: the std of a ``normal`` init.
        head_seed: the seed of the head's init, when one was given.
        frozen: the layers shared with a reference (``{"num_shared_layers", "pattern"}``), frozen.
        reward_adapters: reward adapters loaded with ``reward_adapter=``: name -> where from.
    """

    source: str | None = None
    revision: str | None = None
    folder: str | None = None
    head_init: str = "random"
    head_std: float | None = None
    head_seed: int | None = None
    frozen: dict[str, Any] | None = None
    reward_adapters: dict[str, str] = field(default_factory=dict)
