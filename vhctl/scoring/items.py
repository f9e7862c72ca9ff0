"""What the scorer carries per record (an :class:`Item`) and the counts over all of them.

An item is made when a window is tokenized, filled by the forward passes of that window, and
turned into its output dict by :func:`results` once the window is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vhctl.io.records import Record

__all__ = ["Item", "ScoreStats", "results"]


@dataclass
class ScoreStats:
    """Counts over everything scored so far (the CLI prints a summary from them).

    Attributes:
        records: Records scored.
        errors: Error records emitted (bad lines, with ``skip_bad``).
        truncated: Records cut to ``max_length`` (their start was dropped).
        tokens: Tokens scored, after truncation (encoder + decoder tokens for seq2seq).
        shared_prompts: Prompt forwards saved by prefix sharing (a group of n responses saves n - 1).
        shared_tokens: Prompt tokens not recomputed thanks to prefix sharing.
    """

    records: int = 0
    errors: int = 0
    truncated: int = 0
    tokens: int = 0
    shared_prompts: int = 0
    shared_tokens: int = 0


@dataclass
class Item:
    """A record of the current window, tokenized."""

    index: int
    record: Record
    ids: list[int] = field(default_factory=list)  # causal: the sequence; seq2seq: encoder ids
    dec: list[int] | None = None  # seq2seq decoder ids (start token first)
    prefix_len: int = 0  # causal prompt+response: tokens of the (special + prompt) prefix
    error: str | None = None
    truncated: bool = False  # cut to max_length (its start was dropped)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """Tokens this record costs: the sequence, plus the decoder's for seq2seq."""
        return len(self.ids) + (len(self.dec) if self.dec is not None else 0)


def results(
    items: list[Item], stats: ScoreStats, *, mark_truncated: bool = False
) -> Iterator[dict[str, Any]]:
    """The window's output dicts in input order; counted in ``stats`` as each one is handed out.

    An error item becomes ``{"line", "id"?, "error"}``; a scored one gives up its result (the item
    keeps no reference to it, so a long run holds only the current window), with
    ``"truncated": true`` when ``mark_truncated`` and it was cut.
    """
    for item in items:
        if item.error is not None:
            stats.errors += 1
            result: dict[str, Any] = {"line": item.record.line}
            if item.record.has_id:
                result["id"] = item.record.id
            result["error"] = item.error
            yield result
        else:
            stats.records += 1
            stats.tokens += item.tokens
            result, item.result = item.result, {}
            if mark_truncated and item.truncated:
                result["truncated"] = True
            yield result
