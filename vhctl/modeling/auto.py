"""Load any checkpoint vhctl reads with the right class, told from its config (causal or seq2seq)."""

from __future__ import annotations

import os
from typing import Any

from vhctl.checkpoint.config import detect_architecture
from vhctl.constants import ADAPTER_CONFIG_NAME, ARCH_SEQ2SEQ, CONFIG_NAME, TINY_MODEL_NAME
from vhctl.errors import NotAModelError
from vhctl.io.resolve import resolve_model
from vhctl.modeling.causal import AutoModelForCausalLMWithValueHead
from vhctl.modeling.loading import Source, open_source
from vhctl.modeling.seq2seq import AutoModelForSeq2SeqLMWithValueHead
from vhctl.modeling.wrapper import PreTrainedModelWrapper

__all__ = ["load_checkpoint"]


def load_checkpoint(path: str | os.PathLike[str] | Source, **kwargs: Any) -> PreTrainedModelWrapper:
    """Load a checkpoint with the value-head class its config calls for.

    Args:
        path: a vhctl checkpoint, a TRL-style checkpoint, a plain model or PEFT adapter folder, a hub
            id, ``vhctl:tiny``, or a :class:`~vhctl.modeling.loading.Source` already resolved.
        **kwargs: as for ``from_pretrained`` (``dtype``, ``device_map``, ``revision``, ``token``,
            ``allow_pickle``, ``trust_remote_code``...).

    Returns:
        An ``AutoModelForCausalLMWithValueHead`` or ``AutoModelForSeq2SeqLMWithValueHead``.

    Raises:
        NotAModelError: no readable transformers config.
        UnsupportedModelError: neither a causal nor a seq2seq LM.
    """
    from transformers import AutoConfig

    if isinstance(path, Source):
        source = path
    else:
        source = open_source(path, revision=kwargs.get("revision"), token=kwargs.get("token"),
                             allow_pickle=bool(kwargs.get("allow_pickle", False)))  # fmt: skip
        if source.name == TINY_MODEL_NAME:
            source = Source(source.resolved, source.manifest, str(source.folder))
    folder = source.folder
    config_dir = folder
    if (folder / ADAPTER_CONFIG_NAME).is_file() and not (folder / CONFIG_NAME).is_file():
        from peft import PeftConfig  # only here: importing peft costs seconds

        config_dir = resolve_model(PeftConfig.from_pretrained(str(folder)).base_model_name_or_path).path
    try:
        config = AutoConfig.from_pretrained(
            str(config_dir), trust_remote_code=bool(kwargs.get("trust_remote_code", False))
        )
    except (OSError, ValueError) as exc:
        raise NotAModelError(f"{config_dir} holds no readable transformers config: {exc}") from exc
    arch = detect_architecture(config, where=source.name)
    cls = AutoModelForSeq2SeqLMWithValueHead if arch == ARCH_SEQ2SEQ else AutoModelForCausalLMWithValueHead
    return cls.from_pretrained(source, **kwargs)
