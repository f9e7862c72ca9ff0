"""Whether a model's cache can serve several records from one prompt, decided from its classes.

Prefix sharing runs a prompt once with a cache and then the responses on rows of that cache picked
with ``batch_select_indices``. That is exact only for key/value attention caches: a token's keys
and values do not depend on what comes after them, and selecting rows copies them whole. Mamba and
other state-space layers, linear attention and short convolutions (Falcon-H1, Jamba, Bamba,
Mamba2, Qwen3-Next, LFM2...) keep a running state instead, which transformers' row selection does
not carry (and which a padded prompt would have run past anyway). Such a model, or one whose cache
layout is unknown, is scored the plain way. The answer comes from the model's classes and config
only, before any forward pass.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["cache_rows_selectable", "prefix_sharing_supported"]


def _layer_classes() -> tuple[type, ...] | None:
    """transformers' cache layers that hold only keys and values (None on a transformers without them)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None
    try:
        from transformers.cache_utils import DynamicSlidingWindowLayer
    except ImportError:
        return (DynamicLayer,)
    return (DynamicLayer, DynamicSlidingWindowLayer)


def _selectable(layer: Any, classes: tuple[type, ...]) -> bool:
    # The exact classes: their subclasses add state that row selection leaves behind (the hybrid
    # linear-attention layers keep conv and SSM states; indexed layers keep indexer keys).
    return type(layer) in classes


def cache_rows_selectable(cache: Any) -> bool:
    """Whether rows of a filled cache can be picked (and repeated) for the records that share a prompt.

    Args:
        cache: The cache a forward with ``use_cache=True`` returned.

    Returns:
        True when every layer holds only keys and values that ``batch_select_indices`` selects.
    """
    classes = _layer_classes()
    layers = getattr(cache, "layers", None)
    if classes is None or not layers or not hasattr(cache, "batch_select_indices"):
        return False
    return all(_selectable(layer, classes) for layer in layers)


def _unwrap(model: Any) -> Any:
    """The transformers model inside a value-head wrapper or a PeftModel."""
    model = getattr(model, "pretrained_model", model)
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and hasattr(model, "peft_config"):
        model = get_base()
    return model


def _own_cache_class(model: Any) -> str | None:
    """The name of a cache class the model's code defines for itself (an unknown layout), if any."""
    for cls in (type(model), type(getattr(model, "base_model", model))):
        module = sys.modules.get(cls.__module__)
        for name, value in vars(module).items() if module is not None else ():
            if isinstance(value, type) and value.__module__ == cls.__module__ and name.endswith("Cache"):
                return name
    return None


def _planned_layers(config: Any) -> list[Any] | str:
    """The layers of the cache the model will build (empty: added on the fly), or why they are unknown."""
    from transformers import DynamicCache

    try:
        return list(DynamicCache(config=config).layers)
    except TypeError:  # a transformers whose DynamicCache takes no config: one DynamicLayer per layer
        return list(DynamicCache().layers)
    except (KeyError, ValueError, AttributeError) as exc:  # a layer type transformers has no cache layer for
        return f"its cache layout is unknown ({type(exc).__name__}: {exc})"


def prefix_sharing_supported(model: Any) -> tuple[bool, str]:
    """Whether the scorer may compute a prompt shared by several records once and reuse its cache.

    Decided from the model's classes and config, before any forward: the model must not keep a
    recurrent state (transformers marks such models ``_is_stateful``), must not bring a cache class
    of its own, must not use chunked attention (chunks follow absolute positions, which padded
    prompts shift), and every layer of the ``DynamicCache`` its config builds must hold only keys
    and values (``DynamicLayer`` or ``DynamicSlidingWindowLayer``). Mamba, linear-attention and
    short-convolution layers (and hybrid layers that add such a state to attention) are refused.

    Args:
        model: A value-head wrapper, a PeftModel or a transformers causal LM (or its backbone).

    Returns:
        ``(True, "")``, or ``(False, reason)`` with a short reason in the user's terms.
    """
    hf = _unwrap(model)
    config = getattr(hf, "config", None)
    if config is None:
        return False, "the model has no config"
    if getattr(config, "is_encoder_decoder", False):
        return False, "an encoder-decoder model"
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if any(getattr(m, "_is_stateful", False) for m in (hf, getattr(hf, "base_model", hf))):
        return False, "the model keeps a recurrent state (state-space or linear-attention layers)"
    if getattr(text, "attention_chunk_size", None):
        return False, "the model uses chunked attention"
    own = _own_cache_class(hf)
    if own is not None:
        return False, f"the model uses its own cache class ({own})"
    classes = _layer_classes()
    if classes is None:
        return False, "this transformers has no cache layers that rows can be selected from"
    layers = _planned_layers(config)
    if isinstance(layers, str):
        return False, layers
    others = sorted({type(layer).__name__ for layer in layers if not _selectable(layer, classes)})
    if others:
        return False, f"its cache keeps more than keys and values ({', '.join(others)})"
    return True, ""
