"""The scalar value head: dropout, then ``summary = Linear(hidden, 1)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vhctl.checkpoint.config import DEFAULT_DROPOUT, dropout_of, hidden_size_of

__all__ = ["DEFAULT_DROPOUT", "ValueHead", "dropout_of", "hidden_size_of"]


class ValueHead(nn.Module):
    """Maps each hidden state to one scalar: the critic's value estimate.

    Dropout, then ``summary = Linear(hidden, 1)``: the parameters are ``summary.weight`` of shape
    ``(1, hidden)`` and ``summary.bias`` of shape ``(1,)``, the two tensors of
    ``value_head.safetensors`` (as ``v_head.summary.weight`` / ``v_head.summary.bias``).

    Args:
        config: The wrapped model's config. The hidden size is read from it (``word_embed_proj_dim``,
            ``hidden_size``, ``text_config.hidden_size`` or ``decoder.hidden_size``, in TRL's order),
            and its ``summary_dropout_prob``, when it has one, sets the dropout.
        **kwargs: ``summary_dropout_prob``, the dropout before the linear layer when the config has
            none of its own (default 0.1; 0 or None means no dropout). Other keys are ignored, so the
            wrapper can pass all its value-head arguments.

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
        """The value at every position.

        Args:
            hidden_states: ``(batch, seq, hidden)`` hidden states of the wrapped model's last layer, in
                any float dtype (cast to the head's dtype first).

        Returns:
            ``(batch, seq, 1)`` values in the head's dtype (the wrappers squeeze the last axis).
        """
        output = self.dropout(hidden_states)
        if output.dtype != self.summary.weight.dtype:
            output = output.to(self.summary.weight.dtype)
        return self.summary(output)
