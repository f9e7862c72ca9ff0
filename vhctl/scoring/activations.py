"""The GELU swap: GPT-2-style tanh GELUs written op by op run with fewer passes over memory while scoring.

``gelu_new``, ``gelu_fast`` and Bloom's GELU compute
``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))`` in half a dozen elementwise ops,
each allocating a new tensor the size of the MLP's inner layer. The default swap (``"exact"``)
runs the same ops in the same order, in place on two buffers: the same float32 roundings, so the
values are bit for bit those of the model's own forward, with most of the time saved (the
allocations and page faults were most of it on a CPU).

``"kernel"`` (opt-in) runs ``F.gelu(x, approximate="tanh")``, the same function in one kernel. It is
faster still, but rounds differently (up to about 5e-7 per element in float32), and over a 12-layer
GPT-2 124M that moves values by up to about 2e-5 at the scale of a normal-initialised head (std
0.2): more than vhctl's 1e-5 agreement with TRL's forward, so it is not the default.

The swap is an instance attribute, removed afterwards, so the model is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from vhctl.errors import UsageError

__all__ = ["GELU_MODES", "fused_gelus", "gelu_mode", "tanh_gelus"]

GELU_MODES = ("exact", "kernel")  # what a swapped GELU runs: the same ops in place, or the fused kernel

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # the constant NewGELUActivation computes


def _new_gelu(x: torch.Tensor) -> torch.Tensor:
    """``0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))``, op for op, in place."""
    import torch

    inner = torch.pow(x, 3.0)
    inner.mul_(0.044715).add_(x).mul_(_SQRT_2_OVER_PI).tanh_().add_(1.0)
    return (0.5 * x).mul_(inner)


def _fast_gelu(x: torch.Tensor) -> torch.Tensor:
    """``0.5 * x * (1.0 + tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))``, op for op, in place."""
    cubic = (0.044715 * x).mul_(x).add_(1.0)
    inner = (x * 0.7978845608).mul_(cubic).tanh_().add_(1.0)
    return (0.5 * x).mul_(inner)


def _bloom_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x * 0.5 * (1.0 + tanh(0.79788456 * x * (1 + 0.044715 * x * x)))``, op for op, in place."""
    cubic = (0.044715 * x).mul_(x).add_(1.0)
    inner = (0.79788456 * x).mul_(cubic).tanh_().add_(1.0)
    return (x * 0.5).mul_(inner)


def _gelu_kernel(x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.gelu(x, approximate="tanh")


def gelu_mode(fuse: bool | str) -> str | None:
    """The swap a ``fuse_activations`` argument asks for: True is ``"exact"``, False None (no swap).

    Raises:
        UsageError: a string other than ``"exact"`` or ``"kernel"``.
    """
    if isinstance(fuse, bool):
        return "exact" if fuse else None
    if fuse not in GELU_MODES:
        raise UsageError(f"invalid fuse_activations {fuse!r}", hint="use True, False, 'exact' or 'kernel'")
    return fuse


# Activation modules that compute the tanh GELU op by op, and their in-place equivalents.
_EXACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "NewGELUActivation": _new_gelu,
    "FastGELUActivation": _fast_gelu,
    "BloomGelu": _bloom_gelu,
}


def tanh_gelus(model: Any, mode: str = "exact") -> list[tuple[Any, Callable[[torch.Tensor], torch.Tensor]]]:
    """The op-by-op tanh GELU modules of ``model`` (not already patched), each with what it runs instead.

    Args:
        model: The transformers model.
        mode: ``"exact"`` (the same ops in place: identical values) or ``"kernel"`` (the fused
            kernel: faster, about 5e-7 apart per element in float32).
    """
    if mode not in GELU_MODES:
        raise ValueError(f"GELU mode must be one of {GELU_MODES}, got {mode!r}")
    return [
        (m, _gelu_kernel if mode == "kernel" else _EXACT[type(m).__name__])
        for m in model.modules()
        if type(m).__name__ in _EXACT and "forward" not in vars(m)
    ]


@contextlib.contextmanager
def fused_gelus(swaps: list[tuple[Any, Callable[[torch.Tensor], torch.Tensor]]]) -> Iterator[None]:
    """Run the modules of ``swaps`` (from :func:`tanh_gelus`) their new way inside the block, then restore them."""
    for module, forward in swaps:
        module.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for module, _ in swaps:
            vars(module).pop("forward", None)
