"""Frozen reference models that share their first layers with the policy (held once in memory)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from vhctl.constants import LAYER_PATTERNS
from vhctl.errors import LayerPatternError

__all__ = [
    "create_reference_model",
    "detect_layer_pattern",
    "layer_count",
    "split_shared",
]


def _contains_layer(name: str, prefix: str) -> bool:
    return f".{prefix}." in f".{name}."


def layer_count(names: Iterable[str], pattern: str) -> int:
    """How many layers ``pattern`` (with ``{layer}``) numbers among parameter ``names``."""
    if "{layer}" not in pattern:
        raise LayerPatternError(
            f"layer pattern {pattern!r} has no '{{layer}}' placeholder", hint="e.g. 'transformer.h.{layer}'"
        )
    regex = re.compile(r"(?:^|\.)" + re.escape(pattern).replace(r"\{layer\}", r"(\d+)") + r"\.")
    indices = {int(m.group(1)) for n in names for m in [regex.search(n)] if m}
    return max(indices) + 1 if indices else 0


def detect_layer_pattern(names: list[str], pattern: str | None = None) -> tuple[str, int]:
    """The layer pattern of a model (given or detected among the known families) and its layer count."""
    candidates = [pattern] if pattern is not None else list(LAYER_PATTERNS)
    for candidate in candidates:
        count = layer_count(names, candidate)
        if count:
            return candidate, count
    if pattern is not None:
        error = LayerPatternError(
            f"layer pattern {pattern!r} matches no parameter of the model",
            hint="check the parameter names with model.named_parameters()",
        )
        error.names = tuple(names)
        raise error
    error = LayerPatternError(
        "no known layer pattern matches this model",
        hint="pass pattern= (CLI: --pattern), e.g. 'model.layers.{layer}'",
    )
    error.names = tuple(names)
    raise error


def split_shared(
    names: list[str], num_shared_layers: int, pattern: str | None = None
) -> tuple[list[str], str]:
    """Names of the parameters before layer ``num_shared_layers`` (embeddings and layers 0..N-1).

    ``names`` must be in module order (as ``named_parameters`` gives them).
    """
    found, count = detect_layer_pattern(names, pattern)
    if not 0 <= num_shared_layers < count:
        raise LayerPatternError(
            f"cannot share {num_shared_layers} layers: the model has {count} layers ({found})",
            hint=f"choose a number from 0 to {count - 1}",
        )
    boundary = found.format(layer=num_shared_layers)
    shared: list[str] = []
    for name in names:
        if _contains_layer(name, boundary):
            break
        shared.append(name)
    return shared, found


def create_reference_model(
    model: nn.Module, num_shared_layers: int | None = None, pattern: str | None = None
) -> nn.Module:
    """A frozen ``eval()`` copy of ``model`` for the KL penalty of PPO-style training.

    The copy never holds the shared tensors twice, not even while it is built: the shared
    parameters are passed to ``deepcopy`` as already copied.

    Args:
        model: the policy (a value-head model or any ``nn.Module``).
        num_shared_layers: share the embeddings and the first N layers: they are frozen in ``model``
            and the reference points at the same tensors, so they are held once in memory. None:
            share nothing (a full frozen copy).
        pattern: the layer naming (e.g. ``"transformer.h.{layer}"``) when it is not detected; only
            with ``num_shared_layers``.

    Returns:
        The reference model, of the same class as ``model``, in ``eval()`` mode; all its parameters
            have ``requires_grad=False``.

    Raises:
        LayerPatternError: no layer pattern found, ``num_shared_layers`` out of range (it must be
            below the number of layers), or ``pattern`` without ``num_shared_layers``.
    """
    memo: dict[int, Any] = {}
    if num_shared_layers is not None:
        params = dict(model.named_parameters(remove_duplicate=False))
        names = list(params)
        shared, _ = split_shared(names, num_shared_layers, pattern)
        for name in shared:
            param = params[name]
            param.requires_grad_(False)
            memo[id(param)] = param
    elif pattern is not None:
        raise LayerPatternError("pattern= needs num_shared_layers=", hint="pass both, or neither")
    reference = copy.deepcopy(model, memo)
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference.eval()
