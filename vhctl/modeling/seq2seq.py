"""``AutoModelForSeq2SeqLMWithValueHead``: an encoder-decoder LM plus a value per decoder token."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM

from vhctl.constants import ARCH_SEQ2SEQ
from vhctl.errors import UnsupportedModelError
from vhctl.modeling.value_head import ValueHead
from vhctl.modeling.wrapper import PreTrainedModelWrapper


class AutoModelForSeq2SeqLMWithValueHead(PreTrainedModelWrapper):
    """A seq2seq LM (T5, BART...) with a value head on the decoder's last hidden state."""

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
            any(attr in name for attr in self.lm_head_namings) for name, _ in self.pretrained_model.named_modules()
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

        Returns ``(lm_logits, loss, value)`` (plus the cache on request); ``value`` is
        ``(batch, decoder_seq)`` in fp32.
        """
        kwargs = self._cache_kwargs(past_key_values, kwargs)
        output = self.pretrained_model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs
        )
        return self._outputs(output, output.decoder_hidden_states[-1], return_past_key_values)
