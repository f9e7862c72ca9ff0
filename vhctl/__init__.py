"""vhctl: value-head checkpoints for RLHF, a drop-in for TRL's value-head models.

The heavy imports (torch, transformers) happen on first use of a public name, so that
``vhctl --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vhctl._version import __version__

__all__ = [
    "AutoModelForCausalLMWithValueHead",
    "AutoModelForSeq2SeqLMWithValueHead",
    "PreTrainedModelWrapper",
    "ValueHead",
    "__version__",
    "create_reference_model",
]

_LAZY = {
    "ValueHead": "vhctl.modeling.value_head",
    "PreTrainedModelWrapper": "vhctl.modeling.wrapper",
    "AutoModelForCausalLMWithValueHead": "vhctl.modeling.causal",
    "AutoModelForSeq2SeqLMWithValueHead": "vhctl.modeling.seq2seq",
    "create_reference_model": "vhctl.modeling.reference",
}

if TYPE_CHECKING:
    from vhctl.modeling.causal import AutoModelForCausalLMWithValueHead
    from vhctl.modeling.reference import create_reference_model
    from vhctl.modeling.seq2seq import AutoModelForSeq2SeqLMWithValueHead
    from vhctl.modeling.value_head import ValueHead
    from vhctl.modeling.wrapper import PreTrainedModelWrapper


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vhctl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
