"""Where and in what precision to score: ``--device`` and ``--dtype`` turned into torch objects.

Torch is imported only when a spec is resolved, so parsing options stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vhctl.dtypes import canonical_dtype
from vhctl.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_CHOICES", "resolve_device", "resolve_dtype"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a ``torch.device``; ``auto`` is CUDA when there is one.

    Raises:
        UsageError: an unknown spec, or CUDA asked for where there is none (or not that index).
    """
    import torch

    value = (spec or "auto").strip().lower()
    if value == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or value.startswith("cuda:"):
        index_text = value.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise UsageError(f"invalid device {spec!r}", hint=f"use one of {', '.join(DEVICE_CHOICES)}")
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {spec!r} asked for, but CUDA is not available here", hint="use --device cpu"
            )
        index = int(index_text) if index_text else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise UsageError(
                f"device {spec!r} asked for, but there {'is' if count == 1 else 'are'} only {count} CUDA device(s)",
                hint=f"use cuda:0..cuda:{count - 1}",
            )
        return torch.device("cuda", index)
    raise UsageError(f"invalid device {spec!r}", hint=f"use one of {', '.join(DEVICE_CHOICES)}")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Turn ``auto`` or a name of :mod:`vhctl.dtypes` (``bf16``, ``float16``...) into a ``torch.dtype``.

    ``auto`` is bfloat16 on a CUDA device that supports it and float32 everywhere else (CPU, older
    GPUs: float16 can overflow in some models, so it is only used when asked for).

    Raises:
        UsageError: an unknown dtype name.
    """
    import torch

    value = (spec or "auto").strip().lower()
    if value == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    name = canonical_dtype(value)
    return getattr(torch, name)
