"""Batch planning: the least estimated time (padding + a fixed cost per pass) within the budget."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhctl.scoring.batching import pass_overhead, plan_batches


def _time(widths: list[int], sizes: list[int], overhead: int) -> int:
    total, start = 0, 0
    for size in sizes:
        start += size
        total += overhead + size * widths[start - 1]
    return total


def _fits(widths: list[int], sizes: list[int], max_rows) -> bool:
    start = 0
    for size in sizes:
        start += size
        if size > max(1, max_rows(widths[start - 1])):
            return False
    return True


def _brute_force(widths: list[int], max_rows, overhead: int) -> int:
    """The least time over every way to cut the sequence (2**(n-1) plans)."""
    n = len(widths)
    best = None
    for cuts in itertools.product([False, True], repeat=n - 1):
        sizes, run = [], 1
        for cut in cuts:
            if cut:
                sizes.append(run)
                run = 0
            run += 1
        sizes.append(run)
        if _fits(widths, sizes, max_rows):
            cost = _time(widths, sizes, overhead)
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@settings(max_examples=300, deadline=None)
@given(
    widths=st.lists(st.integers(1, 40), min_size=1, max_size=10).map(sorted),
    budget=st.integers(1, 120),
    overhead=st.sampled_from([0, 1, 8, 64, 4096]),
)
def test_plan_is_optimal_and_within_the_budget(widths: list[int], budget: int, overhead: int) -> None:
    def max_rows(width: int) -> int:
        return budget // width

    sizes = plan_batches(widths, max_rows=max_rows, overhead=overhead)
    assert sum(sizes) == len(widths) and all(size >= 1 for size in sizes)
    assert _fits(widths, sizes, max_rows)
    assert _time(widths, sizes, overhead) == _brute_force(widths, max_rows, overhead)


def test_cheap_passes_cut_at_length_jumps_and_dear_ones_fill_the_budget() -> None:
    widths = [10] * 4 + [50] * 4
    assert plan_batches(widths, max_rows=lambda w: 1000 // w, overhead=8) == [
        4,
        4,
    ]  # 40 tokens of padding > 8
    assert plan_batches(widths, max_rows=lambda w: 1000 // w, overhead=4096) == [8]  # one pass is cheaper
    assert plan_batches(widths, max_rows=lambda w: 100 // w, overhead=4096) == [4, 2, 2]  # the budget wins


def test_bad_input() -> None:
    assert plan_batches([], max_rows=lambda w: 1, overhead=1) == []
    with pytest.raises(ValueError, match="sorted"):
        plan_batches([3, 2], max_rows=lambda w: 10, overhead=1)
    assert pass_overhead("cpu") < pass_overhead("cuda") and pass_overhead("xpu") > 0
