"""Deprecated import path: ``load_checkpoint`` lives in :mod:`vhctl.modeling` now (``from vhctl.modeling
import load_checkpoint``). Importing this module warns; it will be removed in vhctl 0.3."""

from __future__ import annotations

import warnings

from vhctl.modeling.auto import load_checkpoint

__all__ = ["load_checkpoint"]

warnings.warn(
    "vhctl.checkpoint.load is deprecated and will be removed in vhctl 0.3: "
    "use 'from vhctl.modeling import load_checkpoint'",
    FutureWarning,
    stacklevel=2,
)
