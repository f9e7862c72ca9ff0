"""Value-head models: the drop-in for TRL's classes (value head, wrappers, reference models).

The classes load and save themselves (:mod:`~vhctl.modeling.loading`, :mod:`~vhctl.modeling.saving`);
:func:`load_checkpoint` picks the causal or seq2seq class from a checkpoint's config.
"""

from __future__ import annotations

from vhctl.modeling.auto import load_checkpoint

__all__ = ["load_checkpoint"]
