"""Streaming value (and reward) scoring of text with a value-head model.

The plain way to score is TRL's: pad a batch, run the whole language model with
``output_hidden_states=True`` and apply the value head to ``hidden_states[-1]``. :class:`Scorer`
computes the same numbers with less work:

- it runs the **backbone only** (``model.base_model``: no LM head over the vocabulary, no stack of
  hidden states), under ``torch.inference_mode``;
- it reads the input in **windows** of ``window`` records, sorts each window by length, cuts it
  into batches within a token budget (``batch_size`` times the longest sequence of the window)
  where padding would cost more than another forward pass (:mod:`vhctl.scoring.batching`), and
  emits the results in input order (memory is bounded by the window, whatever the input length);
- records of a window that share an exact **prompt token prefix** (best-of-n: one prompt, n
  responses) compute the prompt once: the prompt runs with ``use_cache=True`` and the responses run
  on the cached keys/values, replicated along the batch, with the matching position ids and mask.

Values match the plain padded forward within float noise (about 1e-6 in float32; the first use
of prompt sharing is checked against the plain path, which takes over if they differ). Seq2seq
models (T5, BART) and models whose cache cannot be reused run the plain path (without the LM
head). GPT-2-style tanh GELUs written op by op run in place while scoring (the same values).

What is scored:

- ``text``: the text with the tokenizer's special tokens (as ``tokenizer(text)``);
- ``prompt`` + ``response``: both tokenized **without** special tokens and concatenated, then the
  tokenizer's special tokens are put around the whole (e.g. a BOS in front if it adds one), so
  every response to one prompt starts with the same token ids; ``values`` covers all the tokens
  (special ones, prompt and response);
- ``messages``: rendered with the tokenizer's chat template, then tokenized without extra special
  tokens (the template writes them);
- seq2seq: the text or prompt goes to the encoder; the decoder gets ``decoder_start_token_id``
  followed by the tokenized response (none for a text), and the value is the one at the last
  decoder token; ``values`` covers the decoder tokens.

With ``max_length``, a longer sequence keeps its **end** (the value at the last token is the one
that matters); ``stats.truncated`` counts them.

The modules, one job each:

- :mod:`~vhctl.scoring.scorer`: the :class:`Scorer` (windows, passes, sharding, read-back);
- :mod:`~vhctl.scoring.device`: ``--device`` / ``--dtype`` to torch objects;
- :mod:`~vhctl.scoring.items`: a record's item, the counts, the output dicts;
- :mod:`~vhctl.scoring.tokenizing`: records to token ids (chat, special tokens, truncation);
- :mod:`~vhctl.scoring.plan` and :mod:`~vhctl.scoring.batching`: prompt groups, batches, packs;
- :mod:`~vhctl.scoring.model_parts`: what the scorer needs to know about a model;
- :mod:`~vhctl.scoring.forwards`: padding, the plain and seq2seq forwards, the value head;
- :mod:`~vhctl.scoring.shared_prefix` and :mod:`~vhctl.scoring.cache`: prefix sharing;
- :mod:`~vhctl.scoring.adapters`, :mod:`~vhctl.scoring.activations`: adapter switching, the GELU swap;
- :mod:`~vhctl.scoring.compiled`: ``compile`` (the compiled blocks, the auto policy, the cache folder);
- :mod:`~vhctl.scoring.readback`, :mod:`~vhctl.scoring.sharding`: results to the host, across ranks;
- :mod:`~vhctl.scoring.distributed`: the process group of a ``torchrun`` launch.
"""

from __future__ import annotations

from vhctl.scoring.device import DEVICE_CHOICES as DEVICE_CHOICES  # the old module's constants
from vhctl.scoring.device import resolve_device, resolve_dtype
from vhctl.scoring.items import ScoreStats
from vhctl.scoring.scorer import WINDOW_PER_BATCH as WINDOW_PER_BATCH
from vhctl.scoring.scorer import Scorer

__all__ = ["ScoreStats", "Scorer", "resolve_device", "resolve_dtype"]
