"""The scalar value head: dropout, then ``summary = Linear(hidden, 1)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vhctl.checkpoint.config import DEFAULT_DROPOUT, dropout_of, hidden_size_of

__all__ = ["DEFAULT_DROPOUT", "ValueHead", "dropout_of", "hidden_size_of"]


class ValueHead(nn.Module):
    """Maps each hidden state to one scalar: the critic's value estimate.

    Args:
        config: the wrapped model's config (the hidden size is read from it).
        summary_dropout_prob: dropout before the linear layer, used when the config has no
            ``summary_dropout_prob`` of its own (default 0.1; 0 or None means no dropout).

    Shapes: ``(batch, seq, hidden)`` in, ``(batch, seq, 1)`` out, in the head's dtype (fp32 by default:
    the hidden state is upcast so values keep full precision under bf16 backbones).
    """

    def __init__(self, config: Any, **kwargs: Any) -> None:
        super().__init__()
        self.dropout_prob = dropout_of(config, kwargs)
        self.dropout: nn.Module = nn.Dropout(self.dropout_prob) if self.dropout_prob else nn.Identity()
        self.hidden_size = hidden_size_of(config)
        self.summary = nn.Linear(self.hidden_size, 1)
        self.flatten = nn.Flatten()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = self.dropout(hidden_states)
        if output.dtype != self.summary.weight.dtype:
            output = output.to(self.summary.weight.dtype)
        return self.summary(output)
