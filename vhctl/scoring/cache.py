"""Reusing a prompt's key/value cache for many responses: which caches allow it, and row selection.

Prefix sharing runs a prompt once and its responses on rows of that cache. Only cache layers whose
batch rows can be picked out without writing into the prompt's tensors qualify; anything else (a
transformers without ``DynamicLayer``, a quantised or indexed cache) is scored the plain way.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["cache_layer_types", "cache_supported", "select_cache"]


def cache_layer_types() -> tuple[type, ...] | None:
    """The cache layer classes whose batch rows can be selected (None on a transformers without them)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None
    return (DynamicLayer,)


def cache_supported(cache: Any) -> bool:
    """Whether every layer of ``cache`` can be replicated along the batch by :func:`select_cache`."""
    types = cache_layer_types()
    layers = getattr(cache, "layers", None)
    if types is None or not layers or not hasattr(cache, "batch_select_indices"):
        return False
    return all(isinstance(layer, types) and not hasattr(layer, "indexer_keys") for layer in layers)


def select_cache(cache: Any, index: torch.Tensor) -> Any:
    """A new cache holding rows ``index`` of ``cache`` (rows may repeat); ``cache`` itself is untouched.

    The layers are copied shallowly, then ``batch_select_indices`` replaces their tensors (it does
    not write into them), so the prompt cache serves every chunk of responses. Under a device map
    the layers sit on several GPUs: each gets the index on its own device.
    """
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    on_device = {index.device: index}
    for layer in selected.layers:
        keys = getattr(layer, "keys", None)
        device = getattr(keys, "device", index.device)
        if device not in on_device:
            on_device[device] = index.to(device)
        layer.batch_select_indices(on_device[device])
    return selected
