"""``wrap --init-from-reward RM``: start a critic's value head from a reward model's scalar head.

PPO critics are commonly initialised from the reward model; this takes the reward model's head
(its ``score`` / ``value_head`` / ``v_head`` Linear) and checks it reads the same hidden size as the
model being wrapped. The reward model's backbone is not used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vhctl.checkpoint.adapters import read_adapter_weights, score_state_of
from vhctl.checkpoint.heads import find_head
from vhctl.constants import ADAPTER_CONFIG_NAME, CONFIG_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT
from vhctl.errors import CheckpointError, NotAModelError, UnsupportedModelError
from vhctl.formats.registry import detect_foreign_layout
from vhctl.io.hub import HubToken
from vhctl.io.resolve import resolve_model


@dataclass
class RewardHead:
    """A reward model's scalar head: weight (1, hidden), bias (1,), and where it came from."""

    weight: torch.Tensor
    bias: torch.Tensor
    source: str
    format: str

    def manifest_extra(self) -> dict[str, Any]:
        return {"value_head_from": {"source": self.source, "format": self.format}}


def read_reward_head(
    reward_model: str | os.PathLike[str],
    *,
    hidden_size: int,
    allow_pickle: bool = False,
    token: HubToken = None,
) -> RewardHead:
    """Read the scalar head of ``reward_model`` and check it fits a model of ``hidden_size``.

    Accepts a ``*ForSequenceClassification`` model (num_labels=1), an OpenRLHF reward model or
    critic, a DeepSpeed-Chat reward model (pickle: needs ``allow_pickle``), a PEFT reward adapter
    (``score`` in ``modules_to_save``), a vhctl checkpoint or a TRL checkpoint (their value head).

    Raises:
        NotAModelError: the folder holds no head vhctl recognises.
        UnsupportedModelError: the head has more than one output.
        CheckpointError: the head reads another hidden size than the model being wrapped.
    """
    where = str(reward_model)
    folder = resolve_model(reward_model, token=token, allow_pickle=allow_pickle).path
    if (folder / ADAPTER_CONFIG_NAME).is_file() and not (folder / CONFIG_NAME).is_file():
        score = score_state_of(read_adapter_weights(folder, allow_pickle=allow_pickle), where=where)
        weight, fmt = score["weight"], "peft-adapter"
        bias = score.get("bias")
    else:
        layout = detect_foreign_layout(folder, allow_pickle=allow_pickle)
        if layout is not None:
            weight, bias = layout.head()
            fmt = layout.format
        else:
            found, looked = find_head(Path(folder), allow_pickle=allow_pickle)
            if found is None:
                raise NotAModelError(
                    f"{where} holds no reward head (looked for score, value_head and v_head weights in "
                    f"{', '.join(looked)})",
                    hint="point at a sequence-classification, OpenRLHF or DeepSpeed-Chat reward model, a PEFT "
                    "reward adapter, or a vhctl/TRL checkpoint",
                )
            if V_HEAD_WEIGHT not in found.state:
                raise CheckpointError(f"the head in {where} lacks {V_HEAD_WEIGHT}")
            weight, bias, fmt = found.state[V_HEAD_WEIGHT], found.state.get(V_HEAD_BIAS), found.layout
    if weight.dim() != 2 or weight.shape[0] != 1:
        raise UnsupportedModelError(
            f"the reward head of {where} has shape {tuple(weight.shape)}: a value head needs one output (num_labels=1)"
        )
    if int(weight.shape[1]) != hidden_size:
        raise CheckpointError(
            f"the reward head of {where} reads hidden size {int(weight.shape[1])}, the model being wrapped has "
            f"{hidden_size}",
            hint="use a reward model trained on the same base model family and size",
        )
    if not weight.is_floating_point():
        raise CheckpointError(f"the reward head of {where} is not floating point ({weight.dtype})")
    bias = torch.zeros(1, dtype=weight.dtype) if bias is None else bias.reshape(-1).to(weight.dtype)
    if bias.shape != (1,):
        raise CheckpointError(f"the reward head bias of {where} has shape {tuple(bias.shape)}, not (1,)")
    return RewardHead(weight.detach().clone(), bias.detach().clone(), _source_name(reward_model), fmt)


def _source_name(reward_model: str | os.PathLike[str]) -> str:
    text = str(reward_model)
    return str(Path(text).absolute()) if os.path.isdir(text) else text


__all__ = ["RewardHead", "read_reward_head"]
