"""What a model folder's ``config.json`` says: model type, architecture, hidden size.

Everything here reads configs only (never weights), so the storage layer (validate, make-ref,
formats) and the model classes share one answer to "what kind of model is this".
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vhctl.constants import ARCH_CAUSAL, ARCH_SEQ2SEQ, CONFIG_NAME
from vhctl.errors import NotAModelError, UnsupportedModelError

__all__ = [
    "DEFAULT_DROPOUT",
    "auto_class_for",
    "detect_architecture",
    "dropout_of",
    "hidden_size_of",
    "load_config",
    "quiet_transformers",
    "read_config_dict",
]

DEFAULT_DROPOUT = 0.1


@contextlib.contextmanager
def quiet_transformers(*, warnings_too: bool = False) -> Iterator[None]:
    """Silence transformers' logging (load reports, config notes) for the duration of the block.

    Loading a TRL layout makes transformers report the ``v_head`` keys it does not know, which are
    expected; validation reports problems itself and never logs (``warnings_too`` then also mutes
    Python warnings raised while building configs).
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            if warnings_too:
                warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def read_config_dict(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model folder as a dict; refuse a folder that is not a transformers model."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise NotAModelError(
            f"{folder} holds no {CONFIG_NAME}: it is not a transformers model folder",
            hint="point at a model folder, a vhctl checkpoint or a hub id",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotAModelError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or "model_type" not in data:
        raise NotAModelError(f"{path} has no model_type: it is not a transformers config")
    return data


def load_config(folder: Path, *, where: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of a model folder; the folder's own code runs only when trusted."""
    from transformers import AutoConfig

    data = read_config_dict(folder)
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError, ImportError) as exc:
        hint = "upgrade transformers or pick a supported model"
        if data.get("auto_map") and not trust_remote_code:
            hint = "its config needs the model's own code: pass --trust-remote-code if you trust it"
        raise UnsupportedModelError(
            f"{where} has model type {data.get('model_type')!r}, which this transformers does not know",
            hint=hint,
        ) from exc


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


def hidden_size_of(config: Any) -> int:
    """Width of the hidden state a value head reads, in TRL's lookup order.

    ``word_embed_proj_dim`` comes first because OPT projects its output (e.g. OPT-350m: 1024 -> 512).
    """
    if getattr(config, "word_embed_proj_dim", None) is not None:
        return int(config.word_embed_proj_dim)
    if getattr(config, "hidden_size", None) is not None:
        return int(config.hidden_size)
    text_config = getattr(config, "text_config", None)
    if text_config is not None and getattr(text_config, "hidden_size", None) is not None:
        return int(text_config.hidden_size)
    decoder_hidden = getattr(getattr(config, "decoder", None), "hidden_size", None)
    if getattr(config, "is_encoder_decoder", False) and decoder_hidden is not None:
        return int(decoder_hidden)
    raise UnsupportedModelError(
        f"cannot tell the hidden size of a {type(config).__name__}",
        hint="the config needs one of hidden_size, word_embed_proj_dim, text_config.hidden_size, "
        "decoder.hidden_size",
    )


def dropout_of(config: Any, kwargs: dict[str, Any]) -> float:
    """``config.summary_dropout_prob`` wins when the config has it (as in TRL), else the kwarg, else 0.1."""
    if hasattr(config, "summary_dropout_prob"):
        return float(config.summary_dropout_prob or 0.0)
    value = kwargs.get("summary_dropout_prob", DEFAULT_DROPOUT)
    return float(value) if value is not None else 0.0
