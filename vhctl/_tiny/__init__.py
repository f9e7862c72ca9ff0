"""The tiny model shipped inside the package, usable as "vhctl:tiny" with no network.

A 4-layer GPT-2 (``n_embd`` 64) with random, untrained weights and a byte-level BPE tokenizer
(1024 tokens, ``<|endoftext|>`` as bos/eos/pad, a simple chat template). It is about 1.2 MB, so
examples, tests and CI can wrap, score and validate a real ``transformers`` model without
downloading one. Its values carry no meaning. ``python -m vhctl._tiny.build`` rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["tiny_model_path"]


def tiny_model_path() -> Path:
    """Folder holding the tiny model, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        The absolute path of ``vhctl/_tiny`` (config, safetensors weights and tokenizer files).

    Example:
        >>> from transformers import AutoModelForCausalLM
        >>> model = AutoModelForCausalLM.from_pretrained(tiny_model_path())  # doctest: +SKIP
    """
    return Path(__file__).resolve().parent
