"""Planning a window: prompt groups, length-sorted batches within the token budget, prompt packs.

Every decision here is a function of the window's token counts and the budget only, so every rank
of a data-parallel run makes the same plan and can tell which batches are its own.

The budget is the number of padded tokens one forward pass may hold: ``max_batch_tokens``, or
``batch_size`` times the longest sequence of the window. The longest sequences go ``batch_size``
at a time and shorter ones are packed up to the same number of tokens, so memory never exceeds
what ``batch_size`` of the longest need, and there are fewer, fuller forward passes (what both a
loaded CPU and a GPU want).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from vhctl.scoring.batching import plan_batches, round_up
from vhctl.scoring.items import Item, ScoreStats

__all__ = ["PromptGroup", "group_prompts", "length_batches", "prompt_packs", "split"]

T = TypeVar("T")


@dataclass
class PromptGroup:
    """Window records whose sequences start with the same prompt token ids."""

    prompt: list[int]
    items: list[Item]


def group_prompts(items: list[Item], stats: ScoreStats) -> tuple[list[PromptGroup], list[Item]]:
    """Split a window into prompt groups (shared prefix, two or more records) and plain records.

    The work sharing saves is counted in ``stats`` (``shared_prompts``, ``shared_tokens``).
    """
    by_prompt: dict[tuple[int, ...], list[Item]] = {}
    plain: list[Item] = []
    for item in items:
        if 0 < item.prefix_len < len(item.ids):
            by_prompt.setdefault(tuple(item.ids[: item.prefix_len]), []).append(item)
        else:
            plain.append(item)
    groups: list[PromptGroup] = []
    for prompt, members in by_prompt.items():
        if len(members) > 1:
            groups.append(PromptGroup(list(prompt), members))
            stats.shared_prompts += len(members) - 1
            stats.shared_tokens += (len(members) - 1) * len(prompt)
        else:
            plain.extend(members)
    return groups, plain


def length_batches(
    items: list[Item], length: Callable[[Item], Any], *, budget: int, overhead: int, bucket: int = 1
) -> Iterator[list[Item]]:
    """Length-sorted batches within the token budget (padded tokens per forward).

    Args:
        items: The records to batch.
        length: An item's length: an int, or (encoder, decoder) lengths for seq2seq.
        budget: Padded tokens per forward pass.
        overhead: The fixed cost of a pass, in tokens (:func:`vhctl.scoring.batching.pass_overhead`).
        bucket: Widths are padded up to a multiple of this (a compiled forward's shapes), and
            planned as such.
    """
    ordered = sorted(items, key=length)
    if ordered and not isinstance(length(ordered[0]), tuple):
        # One width per sequence: cut where padding costs more than another pass.
        sizes = plan_batches(
            [round_up(length(item), bucket) for item in ordered],
            max_rows=lambda width: budget // width,
            overhead=overhead,
        )
        yield from split(ordered, sizes)
        return
    batch: list[Item] = []  # seq2seq (encoder, decoder) lengths: fill the budget in order
    for item in ordered:
        if batch and (len(batch) + 1) * sum(round_up(n, bucket) for n in length(item)) > budget:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def prompt_packs(
    groups: list[PromptGroup], *, budget: int, multi_prompt: bool, sliding_window: int | None
) -> Iterator[list[PromptGroup]]:
    """Pack groups (by prompt length) so one forward computes several prompts.

    Several prompts of different lengths in one batch need per-row position ids
    (``multi_prompt``), and a sliding window that all the tokens fit in; otherwise each prompt runs
    alone. A pack keeps its prompts within the budget and its cached context within 4 budgets.
    """
    ordered = sorted(groups, key=lambda g: len(g.prompt))
    if not multi_prompt:
        yield from ([group] for group in ordered)
        return
    pack: list[PromptGroup] = []
    rows = 0
    for group in ordered:
        longest = len(group.prompt) + max(len(i.ids) - i.prefix_len for i in group.items)
        fits_window = sliding_window is None or longest < sliding_window
        prompt_tokens = (len(pack) + 1) * len(group.prompt)  # sorted: this prompt is the longest
        cache_tokens = (rows + len(group.items)) * longest
        if pack and (prompt_tokens > budget or cache_tokens > 4 * budget or not fits_window):
            yield pack
            pack, rows = [], 0
        if not fits_window:
            yield [group]
            continue
        pack.append(group)
        rows += len(group.items)
    if pack:
        yield pack


def split(ordered: list[T], sizes: list[int]) -> Iterator[list[T]]:
    """Consecutive slices of ``ordered`` of the given sizes (a plan of :func:`plan_batches`)."""
    start = 0
    for size in sizes:
        yield ordered[start : start + size]
        start += size
