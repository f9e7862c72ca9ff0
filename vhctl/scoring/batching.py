"""Cut length-sorted sequences into batches that waste the least time on padding.

A forward pass over ``rows`` sequences padded to ``width`` tokens costs about
``overhead + rows * width`` token-times: every padded token is computed like a real one, and each
pass has a fixed cost on top (reading every weight once, launching the kernels). Greedy packing up
to a token budget pads a whole batch to its longest member; when lengths are spread thinly (a
window of 512 texts over 16..256 tokens, the 8 responses of a few prompts) that is a quarter to a
third of the batch. :func:`plan_batches` finds the cut that minimises the estimated time exactly,
within the budget, so padding is kept only where it is cheaper than one more pass.

The fixed cost, in token-times, depends on the device: on a CPU a pass costs about as much as 50
tokens (measured for 124M-parameter models on 2 cores: 37 ms for 8 tokens, +0.7 ms per token);
on a GPU a pass is worth thousands of tokens, so batches stay as full as the budget allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["PASS_OVERHEAD_TOKENS", "pass_overhead", "plan_batches", "round_up"]

# Fixed cost of one forward pass, in tokens' worth of compute, per device type.
PASS_OVERHEAD_TOKENS = {"cpu": 64, "cuda": 4096, "mps": 1024}
_DEFAULT_OVERHEAD = 1024


def pass_overhead(device_type: str) -> int:
    """The fixed cost of a forward pass on ``device_type`` (``"cpu"``, ``"cuda"``...), in tokens."""
    return PASS_OVERHEAD_TOKENS.get(device_type, _DEFAULT_OVERHEAD)


def round_up(width: int, multiple: int) -> int:
    """``width`` padded up to a multiple of ``multiple`` (the widths a compiled forward takes)."""
    return -(-width // multiple) * multiple if multiple > 1 else width


def plan_batches(widths: Sequence[int], *, max_rows: Callable[[int], int], overhead: int) -> list[int]:
    """Sizes of consecutive batches over ``widths`` (ascending) that minimise the estimated time.

    Args:
        widths: Padded length of each sequence, sorted ascending.
        max_rows: The most sequences one pass may hold when padded to a width (the token budget);
            at least one is always allowed.
        overhead: The fixed cost of one pass, in tokens (see :func:`pass_overhead`).

    Returns:
        Batch sizes, in order, summing to ``len(widths)``. The plan is a function of its inputs
        only, so every process of a data-parallel run makes the same one.

    An exact dynamic programme: the best plan for the first ``b`` sequences ends with one batch
    ``a..b`` padded to ``widths[b - 1]``, so ``best[b] = min(best[a] + overhead + (b - a) * width)``
    over the ``a`` the budget allows. ``O(n * k)`` for ``n`` sequences and ``k`` rows per batch at
    most: a few milliseconds for a window of 512.
    """
    n = len(widths)
    if any(widths[i] > widths[i + 1] for i in range(n - 1)):
        raise ValueError("widths must be sorted ascending")
    best = [0] * (n + 1)  # best[b]: least time for the first b sequences
    cut = [0] * (n + 1)
    for b in range(1, n + 1):
        width = widths[b - 1]
        low = max(0, b - max(1, max_rows(width)))
        a = min(range(low, b), key=lambda a: best[a] - a * width)  # the first of equals: fuller batches
        best[b], cut[b] = best[a] + overhead + (b - a) * width, a
    sizes: list[int] = []
    b = n
    while b > 0:
        sizes.append(b - cut[b])
        b = cut[b]
    return sizes[::-1]
