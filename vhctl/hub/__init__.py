"""The Hugging Face Hub: uploading checkpoints with a model card (resolving ids is :mod:`vhctl.io.resolve`).

The ``vhctl push`` operation (validate, dry run, then this upload) is
:func:`vhctl.ops.push.push_checkpoint`. ``from vhctl.hub import model_card, resolve_model`` keeps
working as in vhctl 0.1; ``resolve_model_dir`` (0.1) is ``resolve_model(...).path``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vhctl.hub.card import CARD_MARKER, format_size, model_card
from vhctl.hub.push import PushResult, upload_checkpoint
from vhctl.io.resolve import PICKLE_PATTERNS, SAFE_PATTERNS, ResolvedModel, resolve_model

__all__ = [
    "CARD_MARKER",
    "PICKLE_PATTERNS",
    "SAFE_PATTERNS",
    "PushResult",
    "ResolvedModel",
    "format_size",
    "model_card",
    "resolve_model",
    "resolve_model_dir",
    "upload_checkpoint",
]


def resolve_model_dir(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``resolve_model(...).path``, the vhctl 0.1 name."""
    return resolve_model(name_or_path, **kwargs).path
