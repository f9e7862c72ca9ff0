"""Reward normalisation carried over from OpenRLHF (``config.mean`` / ``config.std``).

OpenRLHF reward models store the mean and standard deviation of their rewards on the evaluation
set; with ``normalize_reward`` its models return ``(r - mean) / std``. vhctl keeps the pair in the
manifest (``extra["reward_normalization"] = {"mean": m, "std": s}``) and applies it only when
scoring asks for normalised rewards (``vhctl score --normalize``).
"""

from __future__ import annotations

import math
from typing import Any

from vhctl.errors import CheckpointError

NORMALIZATION_KEY = "reward_normalization"


def check_normalization(mean: Any, std: Any, *, where: str) -> tuple[float, float]:
    """A usable (mean, std) pair, or a CheckpointError saying what is wrong with it."""
    if (
        isinstance(mean, bool)
        or isinstance(std, bool)
        or not isinstance(mean, int | float)
        or not isinstance(std, int | float)
    ):
        raise CheckpointError(f"{where}: reward mean/std must be numbers, got {mean!r}/{std!r}")
    mean, std = float(mean), float(std)
    if not math.isfinite(mean) or not math.isfinite(std) or std <= 0:
        raise CheckpointError(f"{where}: reward mean {mean} / std {std} cannot normalise (std must be > 0)")
    return mean, std


def normalization_of(manifest: Any) -> tuple[float, float] | None:
    """The (mean, std) to normalise rewards with, or None when the checkpoint has none.

    Args:
        manifest: a :class:`vhctl.checkpoint.manifest.Manifest`.

    Raises:
        CheckpointError: the manifest holds a normalisation that cannot be used (std <= 0, not numbers).
    """
    extra = getattr(manifest, "extra", None)
    if not isinstance(extra, dict) or extra.get(NORMALIZATION_KEY) is None:
        return None
    entry = extra[NORMALIZATION_KEY]
    if not isinstance(entry, dict):
        raise CheckpointError(f"manifest extra.{NORMALIZATION_KEY} must be an object with mean and std")
    return check_normalization(
        entry.get("mean"), entry.get("std"), where=f"manifest extra.{NORMALIZATION_KEY}"
    )


def normalize(value: float, normalization: tuple[float, float]) -> float:
    """OpenRLHF's normalised reward: ``(value - mean) / std``."""
    mean, std = normalization
    return (value - mean) / std


__all__ = ["NORMALIZATION_KEY", "check_normalization", "normalization_of", "normalize"]
