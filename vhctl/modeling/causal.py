"""``AutoModelForCausalLMWithValueHead``: a causal LM plus a scalar value per token."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM

from vhctl.constants import ARCH_CAUSAL
from vhctl.modeling.value_head import ValueHead
from vhctl.modeling.wrapper import PreTrainedModelWrapper

__all__ = ["AutoModelForCausalLMWithValueHead"]


class AutoModelForCausalLMWithValueHead(PreTrainedModelWrapper):
    """An autoregressive LM with a value head, as used by PPO-style trainers.

    ``forward`` returns ``(lm_logits, loss, value)`` with ``value`` of shape ``(batch, seq)`` in fp32
    and the logits upcast to fp32 (plus the past key values with ``return_past_key_values=True``).
    Build one with ``from_pretrained`` (see :class:`~vhctl.modeling.wrapper.PreTrainedModelWrapper`).

    Args:
        pretrained_model: The ``transformers`` causal LM (or a ``peft.PeftModel`` of one) to wrap.
        **kwargs: The value-head arguments: ``summary_dropout_prob`` (default 0.1; the config's wins),
            ``v_head_init_strategy`` (None: PyTorch's default init; ``"normal"``: N(0, range) weights
            and a zero bias) and ``v_head_initializer_range`` (default 0.2); and the
            :class:`~vhctl.modeling.wrapper.PreTrainedModelWrapper` arguments (``score_module``,
            ``supports_rm_adapter``, ``rm_adapter_name``).

    Example:
        >>> model = AutoModelForCausalLMWithValueHead.from_pretrained("vhctl:tiny", v_head_init_strategy="normal")
        >>> logits, loss, value = model(input_ids)
    """

    transformers_parent_class = AutoModelForCausalLM
    supported_args = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")
    architecture = ARCH_CAUSAL

    def __init__(self, pretrained_model: Any, **kwargs: Any) -> None:
        super().__init__(pretrained_model, **kwargs)
        head_kwargs, _, _ = self._split_kwargs(kwargs)
        self.v_head = ValueHead(self.pretrained_model.config, **head_kwargs)
        self._init_weights(**head_kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        return_past_key_values: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Run the LM and the head.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            past_key_values: a cache from an earlier call, for incremental decoding.
            attention_mask: ``(batch, seq)``, 1 for real tokens and 0 for padding.
            return_past_key_values: also return the model's cache.
            **kwargs: passed to the wrapped model (``labels``, ``position_ids``...).

        Returns:
            lm_logits (torch.Tensor): ``(batch, seq, vocab)``, upcast to fp32.
            loss (torch.Tensor | None): the LM loss, or None without ``labels``.
            value (torch.Tensor): ``(batch, seq)`` in fp32, the value at every position.
            past_key_values (Any): the model's cache, as a fourth item only with ``return_past_key_values``.
        """
        kwargs["output_hidden_states"] = True
        kwargs = self._cache_kwargs(past_key_values, kwargs)
        output = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self._outputs(output, output.hidden_states[-1], return_past_key_values)
