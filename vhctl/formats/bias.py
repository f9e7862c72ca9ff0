"""Keeping a head's bias exact in formats whose head has none.

vhctl's value is ``w . h + b``. OpenRLHF and ``*ForSequenceClassification`` compute ``w . h``. When
the hidden state ``h`` is the output of a norm with a bias ``beta`` (GPT-2's ``ln_f``...), adding
``d = b * w / (w . w)`` to ``beta`` gives ``w . (h + d) = w . h + b``: the raw score is exact and the
model is plain transformers. Importing it back subtracts the same ``d`` while the head is the one
exported (the base comes back as it was); a head trained since leaves the fold in the norm and
gets a zero bias, so importing always gives back the scores the model computes.
"""

from __future__ import annotations

import hashlib

import torch

from vhctl.errors import UnsupportedModelError
from vhctl.formats.keymaps import FOLDABLE_NORM_BIAS

__all__ = [
    "FOLD_TOLERANCE",
    "fold",
    "foldable_key",
    "head_fingerprint",
    "unfold",
]

# A fold must reproduce the bias this closely (relative to max(1, |b|)), else it is refused.
FOLD_TOLERANCE = 1e-7


def foldable_key(model_type: str, keys: set[str] | list[str]) -> str | None:
    """The final-norm bias key a head bias can be folded into, for this model, or None."""
    entry = FOLDABLE_NORM_BIAS.get(model_type)
    if entry is None:
        return None
    key, blockers = entry
    present = set(keys)
    if key not in present or any(b in present for b in blockers):
        return None
    return key


def _delta(weight: torch.Tensor, bias: float) -> torch.Tensor:
    w = weight.detach().reshape(-1).to(torch.float64)
    norm2 = float(torch.dot(w, w))
    if norm2 == 0.0:
        raise UnsupportedModelError("the value head's weight is all zeros: its bias cannot be folded")
    return w * (bias / norm2)


def fold(norm_bias: torch.Tensor, weight: torch.Tensor, bias: float, *, key: str) -> torch.Tensor:
    """``norm_bias + b * w / (w . w)`` in the norm's dtype; refused when that dtype cannot hold it exactly."""
    new = (norm_bias.detach().to(torch.float64) + _delta(weight, bias)).to(norm_bias.dtype)
    w = weight.detach().reshape(-1).to(torch.float64)
    got = float(torch.dot(w, new.to(torch.float64) - norm_bias.detach().to(torch.float64)))
    if abs(got - bias) > FOLD_TOLERANCE * max(1.0, abs(bias)):
        raise UnsupportedModelError(
            f"folding the head's bias {bias} into {key} ({norm_bias.dtype}) would change scores by "
            f"{abs(got - bias):.3g}",
            hint="export from a float32 checkpoint (vhctl wrap --dtype float32), or pass --bias config",
        )
    return new


def unfold(norm_bias: torch.Tensor, weight: torch.Tensor, bias: float) -> torch.Tensor:
    """Undo :func:`fold` (to the last bit or so): ``norm_bias - b * w / (w . w)``."""
    return (norm_bias.detach().to(torch.float64) - _delta(weight, bias)).to(norm_bias.dtype)


def head_fingerprint(weight: torch.Tensor) -> str:
    """sha256 of the head weight's float32 bytes: tells whether a model was retrained since export."""
    data = weight.detach().to("cpu", torch.float32).contiguous().reshape(-1).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()
