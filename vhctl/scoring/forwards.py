"""The forward passes scoring runs: padding, the causal and seq2seq forwards, the value head.

The plain way to score is TRL's: pad a batch, run the whole language model with
``output_hidden_states=True`` and apply the value head to ``hidden_states[-1]``. These forwards
compute the same numbers with less work: they run the **backbone only** (no LM head over the
vocabulary, no stack of hidden states) when the model has one, and fall back to the full model
(its ``hidden_states[-1]``) when it does not (e.g. PEFT prompt learning). While ``compiling`` is
set, the plain and seq2seq forwards of two rows or more run compiled
(:mod:`~vhctl.scoring.compiled`), on widths padded to a multiple of its ``BUCKET``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vhctl.errors import model_failures
from vhctl.scoring.batching import round_up
from vhctl.scoring.compiled import BUCKET, CompiledBlocks
from vhctl.scoring.items import Item
from vhctl.scoring.model_parts import ModelParts

if TYPE_CHECKING:
    import torch

__all__ = ["Forwards", "Padded", "torch_stack_last"]


@dataclass
class Padded:
    """A right-padded batch on the model's device, with its lengths also on the host."""

    ids: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    lengths_list: list[int]
    padded: bool


class Forwards:
    """One model's forwards, from token rows to the last hidden state (and per-token values).

    Args:
        parts: What :func:`~vhctl.scoring.model_parts.find_parts` found in the model.
        v_head: The wrapper's value head (``summary`` is its linear layer).
        pad_id: The id padding is filled with (masked out; any valid id does).

    Attributes:
        compiling: Run the plain and seq2seq forwards compiled (set per window by the scorer).
        can_compile: This model has a backbone (or an encoder and a decoder) to compile.
    """

    def __init__(self, parts: ModelParts, v_head: Any, pad_id: int) -> None:
        self.parts = parts
        self._v_head = v_head
        self._pad_id = pad_id
        self.compiling = False
        roots = [parts.backbone] if parts.backbone is not None else [parts.encoder, parts.decoder]
        whole = all(root is not None for root in roots)  # else the full model runs: never compiled
        self._compiled = CompiledBlocks([root for root in roots if whole], "the model's layers")
        self.can_compile = self._compiled.usable

    @property
    def compile_failed(self) -> bool:
        """A compile was tried and failed: the forwards run eagerly for good."""
        return self._compiled.failed

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """Value head over hidden states (..., H) -> (...) in float32, as the wrapper computes it."""
        weight = self._v_head.summary.weight
        return self._v_head(hidden.to(weight.device)).squeeze(-1).float()

    def pad(self, rows: list[list[int]], multiple: int = 1) -> Padded:
        """Right-pad token rows and send them to the model's device without waiting for it.

        With ``multiple`` > 1 (a compiled forward) the width is a multiple of it, and there is
        always some padding: transformers drops a mask of all ones, and the compiled blocks would
        need a second graph for a batch without one.
        """
        import torch

        lengths = [len(r) for r in rows]
        width = round_up(max(lengths), multiple)
        if multiple > 1 and min(lengths) == width:
            width += multiple
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        lengths_t = torch.tensor(lengths, dtype=torch.long)
        mask = (torch.arange(width)[None, :] < lengths_t[:, None]).long()
        return Padded(
            ids=self.upload(ids),
            mask=self.upload(mask),
            lengths=self.upload(lengths_t),
            lengths_list=lengths,
            padded=min(lengths) != width,
        )

    def fits_compiled(self, lengths: list[int]) -> bool:
        """Whether rows of these lengths, padded as a compiled batch is (see :meth:`pad`), stay within
        the model's position limit: a batch of records at the limit would index past it."""
        limit = self.parts.position_limit
        if limit is None or self.parts.seq2seq:
            return True
        width = round_up(max(lengths), BUCKET)
        if min(lengths) == width:
            width += BUCKET
        return width <= limit

    def matches_plain(self, item: Item, last: torch.Tensor) -> bool:
        """Whether ``last``, the hidden state (H,) a cache-reusing path gave ``item``'s last token,
        yields the plain forward's value within float noise (the first-use check of prefix sharing
        and of the prefix cache: a model that builds positions or masks some other way is caught)."""
        import torch

        cached = float(self.values(last))
        plain_last, _ = self.plain([item], False)
        plain = float(self.values(plain_last[0]))
        tolerance = 1e-4 if last.dtype == torch.float32 else 5e-2  # float noise is ~1e-6 in float32
        return abs(cached - plain) <= tolerance * (1.0 + abs(plain))

    def upload(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on the model's input device."""
        device = self.parts.device
        if device.type == "cuda":  # pinned + non_blocking: the copy does not wait for queued kernels
            return tensor.pin_memory().to(device, non_blocking=True)
        return tensor.to(device)

    def gather(
        self, hidden: torch.Tensor, padded: Padded, per_token: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The hidden state (B, H) at each row's last token, and each row's values (n_b,) if ``per_token``."""
        import torch

        lengths = padded.lengths.to(hidden.device)  # a no-op, except under a device map (last GPU)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        if not per_token:
            return last, None
        values = self.values(hidden)
        return last, [values[b, :n] for b, n in enumerate(padded.lengths_list)]

    @model_failures("scoring")  # an exception in the model's code: one line, not a traceback
    def causal(self, ids: torch.Tensor, mask: torch.Tensor | None, **extra: Any) -> tuple[torch.Tensor, Any]:
        """Final hidden states (B, T, H) of the causal model and its cache (with ``use_cache=True``).

        Through the backbone when there is one (no LM head); else the full model's
        ``hidden_states[-1]``, as the wrapper's forward takes it.
        """
        backbone = self.parts.backbone
        if backbone is not None:
            out = backbone(input_ids=ids, attention_mask=mask, **extra)
            cache = getattr(out, "cache", None)
            if cache is None and extra.get("use_cache"):
                cache = getattr(out, "past_key_values", None)
            return out.last_hidden_state, cache
        out = self.parts.pm(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=True, use_cache=False
        )
        return out.hidden_states[-1][:, -ids.shape[1] :], None  # prompt tuning prepends virtual tokens

    def plain(self, batch: list[Item], per_token: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """A padded causal forward over ``batch``: see :meth:`gather` for what comes back."""
        compiled = self._compiled if self.compiling and len(batch) > 1 else None
        if compiled is not None and not self.fits_compiled([len(item.ids) for item in batch]):
            compiled = None  # the bucket's padding would run past the model's positions: eager
        padded = self.pad([item.ids for item in batch], BUCKET if compiled is not None else 1)
        if compiled is not None:  # always with a mask: the graph was traced with one
            hidden = self._run(compiled, self._backbone_hidden, padded.ids, padded.mask)
        else:
            hidden, _ = self.causal(padded.ids, padded.mask if padded.padded else None, use_cache=False)
        return self.gather(hidden, padded, per_token)

    @model_failures("scoring")
    def seq2seq(self, batch: list[Item], per_token: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Encoder then decoder (without LM head when they can be found); values at the decoder tokens."""
        parts = self.parts
        compiled = self._compiled if self.compiling and len(batch) > 1 else None
        multiple = BUCKET if compiled is not None else 1
        enc = self.pad([item.ids for item in batch], multiple)
        dec = self.pad([item.dec or [] for item in batch], multiple)
        if parts.encoder is not None and parts.decoder is not None:
            args = (enc.ids, enc.mask, dec.ids, dec.mask)
            hidden = (
                compiled(self._seq2seq_hidden, *args) if compiled is not None else self._seq2seq_hidden(*args)
            )
        else:
            out = parts.pm(
                input_ids=enc.ids,
                attention_mask=enc.mask,
                decoder_input_ids=dec.ids,
                decoder_attention_mask=dec.mask,
                output_hidden_states=True,
                return_dict=True,
                use_cache=False,
            )
            hidden = out.decoder_hidden_states[-1]
        return self.gather(hidden, dec, per_token)

    @model_failures("scoring")
    def _run(self, compiled: CompiledBlocks, function: Any, *args: torch.Tensor) -> torch.Tensor:
        return compiled(function, *args)

    def _backbone_hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The backbone's final hidden states (B, T, H), no cache (what runs with compiled layers)."""
        backbone = self.parts.backbone
        assert backbone is not None  # compiled passes run only on a model with a backbone
        return backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    def _seq2seq_hidden(
        self, enc_ids: torch.Tensor, enc_mask: torch.Tensor, dec_ids: torch.Tensor, dec_mask: torch.Tensor
    ) -> torch.Tensor:
        """The decoder's final hidden states (B, T_dec, H) over the encoded inputs."""
        parts = self.parts
        assert parts.encoder is not None and parts.decoder is not None  # seq2seq passes have both
        encoded = parts.encoder(input_ids=enc_ids, attention_mask=enc_mask).last_hidden_state
        return parts.decoder(
            input_ids=dec_ids,
            attention_mask=dec_mask,
            encoder_hidden_states=encoded,
            encoder_attention_mask=enc_mask,
            use_cache=False,
        ).last_hidden_state


def torch_stack_last(seq: list[torch.Tensor]) -> torch.Tensor:
    """The last value of each per-token row, as one tensor (read back with the others)."""
    import torch

    return torch.stack([values[-1] for values in seq])
