"""Scorer results made into server answers: normalised, JSON-safe, and marked when truncated.

``vhctl score`` reports truncation as a count; a server answers each request, so each truncated
record says so itself (``"truncated": true``). The scorer counts truncations per window, not per
record; :func:`truncated_flags` finds which records they were, tokenizing only the few records
long enough to have been cut, and none at all when the window had no truncation.
"""

from __future__ import annotations

import math
from typing import Any

from vhctl.formats import normalize
from vhctl.io.records import Record

_MARGIN = 8  # tokens a tokenizer may add beyond one per byte (special tokens, a sentencepiece prefix)


def finish_results(
    results: list[dict[str, Any]], truncated: list[bool], normalization: tuple[float, float] | None
) -> None:
    """In place, as ``vhctl score`` writes them: values normalised (``--normalize``), non-finite
    numbers as null; plus ``"truncated": true`` on the records that were cut."""
    for result, cut in zip(results, truncated, strict=True):
        if "error" in result:
            continue
        if normalization is not None:
            if result.get("value") is not None:
                result["value"] = normalize(result["value"], normalization)
            if result.get("values") is not None:
                result["values"] = [None if v is None else normalize(v, normalization) for v in result["values"]]
        for key in ("value", "reward", "values"):
            if key in result:
                result[key] = finite(result[key])
        if cut:
            result["truncated"] = True


def finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: a non-finite number (also inside a list) becomes None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def truncated_flags(loaded: Any, max_length: int | None, records: list[Record], count: int) -> list[bool]:
    """Which of a window's records the scorer cut to ``max_length``, given that it cut ``count``.

    Args:
        loaded: The :class:`vhctl.serve.model.LoadedModel` (its tokenizer and model config).
        max_length: The scorer's limit.
        records: The window, in order.
        count: How many the scorer counted as truncated in this window.
    """
    flags = [False] * len(records)
    if count <= 0 or max_length is None:
        return flags
    candidates = [i for i, record in enumerate(records) if _byte_bound(record) + _MARGIN > max_length]
    if len(candidates) == count:
        for i in candidates:
            flags[i] = True
        return flags
    seq2seq = bool(getattr(_config(loaded.model), "is_encoder_decoder", False))
    for i in candidates:
        flags[i] = max(_token_lengths(loaded.tokenizer, records[i], seq2seq)) > max_length
    return flags


def _byte_bound(record: Record) -> int:
    """At least the record's token count: a token covers at least one byte of its text."""
    if record.messages is not None:
        return 1 << 30  # the chat template adds text of its own: always look
    parts = (record.text, record.prompt, record.response)
    return sum(len(part.encode("utf-8")) for part in parts if part is not None)


def _token_lengths(tokenizer: Any, record: Record, seq2seq: bool) -> tuple[int, ...]:
    """The lengths the scorer gives the record before truncation (causal; seq2seq: encoder, decoder)."""

    def count(text: str, special: bool) -> int:
        return len(tokenizer(text, add_special_tokens=special)["input_ids"])

    if record.messages is not None:
        rendered = tokenizer.apply_chat_template(record.messages, tokenize=False)
        source = count(rendered, False)
    elif record.prompt is not None and record.response is not None and not seq2seq:
        around = count("", True) - count("", False)  # the special tokens put around the pair
        return (around + count(record.prompt, False) + count(record.response, False),)
    else:
        source = count(record.text if record.text is not None else record.prompt or "", True)
    if seq2seq and record.response is not None:
        return source, 1 + count(record.response, True)
    return (source,)


def _config(model: Any) -> Any:
    inner = getattr(model, "pretrained_model", model)
    return getattr(inner, "config", None) or getattr(getattr(inner, "base_model", None), "config", None)
