"""A PEFT reward adapter on a value-head model: its ``score`` head, and attaching the adapter for scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vhctl.checkpoint.adapters import read_reward_adapter
from vhctl.errors import AdapterError

__all__ = ["attach_reward_adapter", "reward_score_head"]


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


def attach_reward_adapter(model: Any, name: str, adapter_dir: Path) -> Any:
    """The same value-head model with the reward adapter ``name`` loaded through PEFT, ready to score.

    A checkpoint's policy is usually a plain model: the adapter then becomes the PeftModel's only
    adapter, and a scorer runs the policy with adapters disabled and the reward with it enabled.
    The wrapper is built by its own class (``supports_rm_adapter``), as ``from_pretrained`` builds
    one with ``reward_adapter=``; the value head is kept.

    Raises:
        AdapterError: the adapter folder is missing.
    """
    from peft import PeftModel

    if not adapter_dir.is_dir():
        raise AdapterError(
            f"reward adapter {name!r} is listed but {adapter_dir} is missing", hint="run vhctl validate"
        )
    _, score_state = read_reward_adapter(str(adapter_dir))
    base = model.pretrained_model
    if isinstance(base, PeftModel):
        base.load_adapter(str(adapter_dir), name, is_trainable=False)
        peft_model = base
    else:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=name, is_trainable=False)
    device = model.v_head.summary.weight.device  # where the last hidden state lands (device maps too)
    head = reward_score_head(score_state, dtype=getattr(base, "dtype", torch.float32), device=device)
    rewarded = type(model)(peft_model, score_module=head, supports_rm_adapter=True, rm_adapter_name=name)
    rewarded.v_head = model.v_head
    return rewarded.eval()
