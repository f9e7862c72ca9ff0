"""Reusing a prompt's key/value cache for many responses: selecting its rows.

Which models allow it is decided up front by :func:`vhctl.modeling.cache.prefix_sharing_supported`
(attention caches only: no recurrent, convolution or linear-attention state).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["select_cache"]


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
