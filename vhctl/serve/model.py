"""The model a server scores with, loaded the way ``vhctl score`` loads it (:mod:`vhctl.scoring.pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vhctl.scoring.device import resolve_device, resolve_dtype
from vhctl.scoring.pipeline import ScoreOptions, load_scoring_model

__all__ = ["LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    """A value-head model ready for :class:`vhctl.scoring.Scorer`.

    Attributes:
        model: The value-head wrapper, in eval mode, on ``device``.
        tokenizer: The checkpoint's tokenizer.
        normalization: ``(mean, std)`` to normalise values with, or None.
        device: Where the model runs (a ``torch.device``).
        dtype: Its ``torch.dtype``.
        reward: The selected reward adapter's name, or None.
    """

    model: Any
    tokenizer: Any
    normalization: tuple[float, float] | None
    device: Any
    dtype: Any
    reward: str | None


def load_model(options: ScoreOptions) -> LoadedModel:
    """Load the checkpoint for serving (no loading bar: a server's stderr is a log).

    Raises:
        VhctlError: the checkpoint, its tokenizer, reward adapter or normalisation cannot be used.
    """
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    loaded = load_scoring_model(options, device, dtype, progress=False)
    return LoadedModel(
        loaded.model.eval(), loaded.tokenizer, loaded.normalization, device, dtype, loaded.reward
    )
