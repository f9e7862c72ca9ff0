"""What the model classes need to know about PEFT without importing it (``import peft`` costs ~2 s)."""

from __future__ import annotations

import sys

__all__ = ["KBIT_ARGS", "peft_model_types"]

# The keyword arguments of peft's ``prepare_model_for_kbit_training``, every supported peft's (0.14
# to 0.21, and 0.22's ``activation_checkpointing_kwargs``), listed here so that from_pretrained can
# split kwargs without importing peft.
KBIT_ARGS = frozenset(
    {
        "use_gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "activation_checkpointing_kwargs",
        "auto_clear_cache",
    }
)


def peft_model_types() -> tuple[type, ...]:
    """``(PeftModel,)`` when peft is loaded; a model cannot be a PeftModel otherwise."""
    if "peft" not in sys.modules:
        return ()
    from peft import PeftModel

    return (PeftModel,)
