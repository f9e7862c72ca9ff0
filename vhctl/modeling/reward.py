"""The ``score`` head of a PEFT reward adapter, built in one place for the model class and the scorer."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["reward_score_head"]


def reward_score_head(
    score_state: dict[str, torch.Tensor], *, dtype: torch.dtype, device: torch.device | str | int
) -> nn.Linear:
    """A frozen ``Linear(hidden, num_labels)`` holding a reward adapter's ``score`` weights.

    Args:
        score_state: ``weight`` of shape ``(num_labels, hidden)`` and maybe ``bias`` ``(num_labels,)``,
            as :func:`vhctl.checkpoint.adapters.score_state_of` reads them.
        dtype: the dtype of the hidden states it will read (the base model's).
        device: where the last hidden state lands (an int is a CUDA index).

    Returns:
        The head, with ``requires_grad=False`` on every parameter.
    """
    weight = score_state["weight"]
    num_labels, hidden = weight.shape
    head = nn.Linear(int(hidden), int(num_labels), bias="bias" in score_state)
    head.load_state_dict({k: v.to(torch.float32) for k, v in score_state.items()})
    where = f"cuda:{device}" if isinstance(device, int) else device
    return head.to(device=where, dtype=dtype).requires_grad_(False)
