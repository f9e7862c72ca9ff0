"""One dtype vocabulary for every command: ``float32``/``bfloat16``/``float16`` and their short names.

``--dtype bf16`` and ``--dtype bfloat16`` mean the same everywhere (wrap, export, score, serve).
Torch is imported only when a ``torch.dtype`` is asked for, so option parsing stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vhctl.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPE_ALIASES", "DTYPE_NAMES", "canonical_dtype", "dtype_name", "torch_dtype"]

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def canonical_dtype(name: str, *, option: str = "--dtype", allow_auto: bool = False) -> str:
    """The canonical name (``float32``, ``bfloat16``, ``float16``, or ``auto`` when allowed) of ``name``.

    Raises:
        UsageError: ``name`` is not in the vocabulary (the message lists what is).
    """
    value = (name or "").strip().lower()
    if allow_auto and value in ("", "auto"):
        return "auto"
    found = DTYPE_ALIASES.get(value)
    if found is None:
        choices = (("auto",) if allow_auto else ()) + DTYPE_NAMES
        raise UsageError(
            f"invalid dtype {name!r} for {option}",
            hint=f"use one of: {', '.join(choices)} (or bf16, fp16, fp32)",
        )
    return found


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` of a name of the vocabulary (aliases accepted)."""
    import torch

    dtype: torch.dtype = getattr(torch, canonical_dtype(name))
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The name of a ``torch.dtype`` as manifests and configs write it (``torch.bfloat16`` -> ``bfloat16``)."""
    return str(dtype).removeprefix("torch.")
