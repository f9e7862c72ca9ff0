"""Tell causal from seq2seq LMs from a config alone, and refuse what cannot carry a value head."""

from __future__ import annotations

from typing import Any

from vhctl.constants import ARCH_CAUSAL, ARCH_SEQ2SEQ
from vhctl.errors import UnsupportedModelError


def detect_architecture(config: Any, *, where: str = "the model") -> str:
    """Return ``causal-lm`` or ``seq2seq-lm`` for a transformers config, or raise.

    Encoder-only families (BERT, RoBERTa...) are listed by transformers as causal-LM capable
    (``BertLMHeadModel``) but only work as decoders when ``is_decoder`` is set, so they are refused
    unless it is.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        if model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            return ARCH_SEQ2SEQ
        raise UnsupportedModelError(
            f"{where} is an encoder-decoder model of type {model_type!r} that transformers cannot load "
            "as AutoModelForSeq2SeqLM",
            hint="vhctl wraps causal and seq2seq language models",
        )
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
            raise UnsupportedModelError(
                f"{where} is an encoder-only model ({model_type}); a value head needs a causal or "
                "seq2seq language model",
                hint="pick a decoder model such as gpt2 or llama, or a seq2seq model such as t5",
            )
        return ARCH_CAUSAL
    if model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return ARCH_SEQ2SEQ
    raise UnsupportedModelError(
        f"{where} has model type {model_type!r}, which is neither a causal nor a seq2seq language model "
        "known to transformers",
        hint="vhctl wraps causal and seq2seq language models",
    )


def auto_class_for(architecture: str) -> Any:
    """The transformers auto class that loads the base of a checkpoint of this architecture."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if architecture == ARCH_SEQ2SEQ else AutoModelForCausalLM
