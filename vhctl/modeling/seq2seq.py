"""``AutoModelForSeq2SeqLMWithValueHead``: an encoder-decoder LM plus a value per decoder token."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM

from vhctl.constants import ARCH_SEQ2SEQ
from vhctl.errors import UnsupportedModelError
from vhctl.modeling.value_head import ValueHead
from vhctl.modeling.wrapper import PreTrainedModelWrapper

__all__ = ["AutoModelForSeq2SeqLMWithValueHead"]


class AutoModelForSeq2SeqLMWithValueHead(PreTrainedModelWrapper):
    """A seq2seq LM (T5, BART...) with a value head on the decoder's last hidden state.

    ``forward`` returns ``(lm_logits, loss, value)`` with ``value`` of shape ``(batch, decoder_seq)``
    in fp32. Build one with ``from_pretrained`` (see
    :class:`~vhctl.modeling.wrapper.PreTrainedModelWrapper`).

    Args:
        pretrained_model: The ``transformers`` encoder-decoder LM (or a ``peft.PeftModel`` of one) to
            wrap; it must have a language-model head.
        **kwargs: The value-head arguments: ``summary_dropout_prob`` (default 0.1; the config's wins),
            ``v_head_init_strategy`` (None: PyTorch's default init; ``"normal"``: N(0, range) weights
            and a zero bias) and ``v_head_initializer_range`` (default 0.2); and the
            :class:`~vhctl.modeling.wrapper.PreTrainedModelWrapper` arguments (``score_module``,
            ``supports_rm_adapter``, ``rm_adapter_name``).

    Raises:
        UnsupportedModelError: the model has no language-model head.
    """

    transformers_parent_class = AutoModelForSeq2SeqLM
    lm_head_namings = ["lm_head", "embed_out", "output_projection"]
    supported_args = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")
    architecture = ARCH_SEQ2SEQ

    def __init__(self, pretrained_model: Any, **kwargs: Any) -> None:
        super().__init__(pretrained_model, **kwargs)
        head_kwargs, _, _ = self._split_kwargs(kwargs)
        self.is_encoder_decoder = True
        if not self._has_lm_head():
            raise UnsupportedModelError(
                "the model has no language-model head", hint="use a model loadable with AutoModelForSeq2SeqLM"
            )
        self.v_head = ValueHead(self.pretrained_model.config, **head_kwargs)
        self._init_weights(**head_kwargs)

    def _has_lm_head(self) -> bool:
        return any(
            any(attr in name for attr in self.lm_head_namings)
            for name, _ in self.pretrained_model.named_modules()
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        return_past_key_values: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Run the model and read values from the decoder's last hidden state.

        Args:
            input_ids: ``(batch, seq)`` encoder token ids.
            past_key_values: a cache from an earlier call, for incremental decoding.
            attention_mask: ``(batch, seq)`` encoder mask, 1 for real tokens and 0 for padding.
            return_past_key_values: also return the model's cache.
            **kwargs: passed to the wrapped model (``decoder_input_ids`` ``(batch, decoder_seq)``,
                ``labels``, ``decoder_attention_mask``...).

        Returns:
            lm_logits (torch.Tensor): ``(batch, decoder_seq, vocab)``, upcast to fp32.
            loss (torch.Tensor | None): the LM loss, or None without ``labels``.
            value (torch.Tensor): ``(batch, decoder_seq)`` in fp32, the value at every decoder position.
            past_key_values (Any): the model's cache, as a fourth item only with ``return_past_key_values``.
        """
        kwargs = self._cache_kwargs(past_key_values, kwargs)
        output = self.pretrained_model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs
        )
        return self._outputs(output, output.decoder_hidden_states[-1], return_past_key_values)
