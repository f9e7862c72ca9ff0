"""A folder recognised as one of the foreign formats, and the value head it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vhctl.constants import CONFIG_NAME
from vhctl.errors import CheckpointError, UnsupportedModelError
from vhctl.formats import keymaps as km
from vhctl.formats.bias import head_fingerprint
from vhctl.formats.weights import WeightSet

__all__ = ["ForeignLayout"]


@dataclass
class ForeignLayout:
    """A folder in one of the foreign formats, with its config and (lazily read) weights."""

    format: str
    title: str
    folder: Path
    config: dict[str, Any]
    weights: WeightSet
    head_weight_key: str
    head_bias_key: str | None = None

    @property
    def record(self) -> dict[str, Any]:
        """What vhctl wrote into the config when it exported this folder (empty if it did not)."""
        rec = self.config.get(km.VHCTL_EXPORT_FIELD)
        return rec if isinstance(rec, dict) else {}

    def record_matches(self, weight: torch.Tensor) -> bool:
        """True when the head is still the one vhctl exported (not retrained since)."""
        return bool(self.record) and self.record.get("head_sha256") == head_fingerprint(weight)

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The head as vhctl sees it: weight (1, hidden) and bias (1,).

        The bias is the format's own when it has one; else the bias vhctl recorded at export, as long
        as the head is the one vhctl exported. A head trained since keeps a zero bias: a bias folded
        into the final norm then stays there, so the model's scores are kept bit for bit (unfolding
        it with the new weights would be exact only up to float rounding of the norm's bias).
        """
        weight = self.weights.get(self.head_weight_key)
        where = f"{self.folder} ({self.head_weight_key})"
        if weight.dim() != 2 or weight.shape[0] != 1:
            raise UnsupportedModelError(
                f"{where} has shape {tuple(weight.shape)}: a value head has one output (num_labels=1)",
                hint="only scalar reward models and critics can become a value head",
            )
        if not weight.is_floating_point():
            raise CheckpointError(f"{where} is not floating point ({weight.dtype})")
        if self.head_bias_key is not None:
            bias = self.weights.get(self.head_bias_key).reshape(-1)
            if bias.shape != (1,):
                raise CheckpointError(
                    f"{self.folder} ({self.head_bias_key}) has shape {tuple(bias.shape)}, not (1,)"
                )
            return weight, bias.to(weight.dtype)
        value = 0.0
        mode = self.record.get("bias")
        if mode in (km.BIAS_NORM, km.BIAS_MEAN, km.BIAS_CONFIG) and self.record_matches(weight):
            value = _as_float(self.record.get("value_head_bias"), where=f"{self.folder}/{CONFIG_NAME}")
        return weight, torch.tensor([value], dtype=weight.dtype)

    def norm_fold(self) -> tuple[str, float] | None:
        """(norm bias key, bias) when vhctl folded the head bias into the final norm at export and
        the head is still the one it exported (see :meth:`head`)."""
        rec = self.record
        key = rec.get("norm_bias_key")
        if (
            rec.get("bias") == km.BIAS_NORM
            and isinstance(key, str)
            and self.record_matches(self.weights.get(self.head_weight_key))
        ):
            return key, _as_float(rec.get("value_head_bias"), where=f"{self.folder}/{CONFIG_NAME}")
        return None


def _as_float(value: Any, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(
            f"{where}: {km.VHCTL_EXPORT_FIELD}.value_head_bias must be a number, got {value!r}"
        )
    return float(value)
