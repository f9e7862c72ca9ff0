"""What the scorer needs to know about a value-head model, found once when it is set up.

The scorer runs the backbone (no LM head) when it can find one, and needs to know how the model
takes a cache and positions, how far it can see (position limit, local attention window) and, for
seq2seq, which token starts the decoder. Everything here only reads the model and its config.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vhctl.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["ModelParts", "decoder_start_id", "find_parts"]


@dataclass
class ModelParts:
    """The pieces of a value-head model that scoring runs, and the facts that shape the runs.

    Attributes:
        pm: The wrapper's ``pretrained_model`` (a transformers model or a PeftModel).
        hf: The transformers model itself (the PeftModel's base under PEFT).
        is_peft: ``pm`` is a PeftModel (adapters can be switched).
        seq2seq: An encoder-decoder model (T5, BART).
        prompt_learning: A PEFT prompt-learning adapter (virtual tokens): only the full model runs.
        device: Where token ids go: the input embeddings' device (the first GPU of a device map).
        backbone: The causal model without its LM head, or None (the full model runs instead).
        encoder: The seq2seq encoder, or None.
        decoder: The seq2seq decoder (without LM head), or None.
        cache_kw: The backbone's keyword for a cache (``past_key_values`` or ``cache``).
        takes_positions: The backbone accepts ``position_ids`` (needed to pack several prompts).
        sliding_window: The local attention window, if any layer has one.
        position_limit: The most positions the model can embed, if its config says.
    """

    pm: Any
    hf: Any
    is_peft: bool
    seq2seq: bool
    prompt_learning: bool
    device: torch.device
    backbone: Any | None
    encoder: Any | None
    decoder: Any | None
    cache_kw: str
    takes_positions: bool
    sliding_window: int | None
    position_limit: int | None


def find_parts(model: Any) -> ModelParts:
    """Look into a value-head wrapper (vhctl's or TRL's) once, so the forwards need not."""
    pm = model.pretrained_model
    is_peft = hasattr(pm, "peft_config") and hasattr(pm, "get_base_model")
    hf = pm.get_base_model() if is_peft else pm
    config = hf.config
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    prompt_learning = is_peft and any(
        getattr(cfg, "is_prompt_learning", False) for cfg in pm.peft_config.values()
    )
    device = hf.get_input_embeddings().weight.device
    # Backbone: the model without its LM head. Without one we know, run the full model (the plain path).
    backbone = encoder = decoder = None
    if not prompt_learning:
        if seq2seq:
            get_enc, get_dec = getattr(hf, "get_encoder", None), getattr(hf, "get_decoder", None)
            if callable(get_enc) and callable(get_dec):
                encoder, decoder = get_enc(), get_dec()
        else:
            base = getattr(hf, "base_model", hf)
            if base is not hf:
                backbone = base
    params = inspect.signature(backbone.forward).parameters if backbone is not None else {}
    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return ModelParts(
        pm=pm,
        hf=hf,
        is_peft=is_peft,
        seq2seq=seq2seq,
        prompt_learning=prompt_learning,
        device=device,
        backbone=backbone,
        encoder=encoder,
        decoder=decoder,
        cache_kw="cache" if "cache" in params else "past_key_values",
        takes_positions="position_ids" in params,
        sliding_window=_sliding_window(text_config),
        position_limit=_position_limit(text_config),
    )


def decoder_start_id(hf: Any) -> int:
    """The token a seq2seq decoder starts from (config, else generation config).

    Raises:
        UsageError: neither says, so a response cannot be scored.
    """
    start = getattr(hf.config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(getattr(hf, "generation_config", None), "decoder_start_token_id", None)
    if start is None:
        raise UsageError("the seq2seq model's config has no decoder_start_token_id; set it in config.json")
    return int(start)


def _sliding_window(config: Any) -> int | None:
    """The local attention window of the model, if any layer has one (sliding_window, GPT-Neo's window_size)."""
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int):
        window = getattr(config, "window_size", None)
    layer_types = getattr(config, "layer_types", None) or getattr(config, "attention_layers", None) or ()
    uses_sliding = (
        any("sliding" in str(kind) or "local" in str(kind) for kind in layer_types) or not layer_types
    )
    if (
        isinstance(window, int)
        and window > 0
        and uses_sliding
        and getattr(config, "use_sliding_window", True)
    ):
        return window
    return None


def _position_limit(config: Any) -> int | None:
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
