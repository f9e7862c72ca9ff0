"""Data-parallel scoring inside the scorer: which units of the plan this rank computes, and the merge.

Every rank is given the same records and makes the same plan; the batches and prompt packs are
numbered as they are planned and a rank computes those whose number ``% world == rank``. After a
window, the ranks' results are gathered and put in place pass by pass, as one process would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vhctl.errors import UsageError
from vhctl.scoring.items import Item

__all__ = ["Shards", "check_shard"]


def check_shard(shard: tuple[int, int] | None, gather: Callable[[Any], list[Any]] | None) -> None:
    """Raise UsageError for a shard that is not ``(rank, world)`` with a gather where it needs one."""
    if shard is None:
        return
    rank, world = shard
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    if world > 1 and gather is None:
        raise UsageError("a shard of a multi-process run needs a gather function")


class Shards:
    """This rank's share of a multi-process run.

    Args:
        rank: This process's rank, 0..world-1.
        world: Number of processes (more than one).
        gather: A collective that takes this rank's partial results of a window and returns
            every rank's, in rank order.
    """

    def __init__(self, rank: int, world: int, gather: Callable[[Any], list[Any]]) -> None:
        self.rank = rank
        self.world = world
        self._gather = gather
        self._unit = 0  # running index of the batches and prompt packs planned so far
        self._parts: list[dict[int, dict[str, Any]]] = []  # this rank's results, per pass

    def owns_next(self) -> bool:
        """Whether this rank computes the next batch or prompt pack of the plan."""
        unit, self._unit = self._unit, self._unit + 1
        return unit % self.world == self.rank

    def start_pass(self) -> None:
        """A new pass (values, or rewards) of the window begins."""
        self._parts.append({})

    def keep(self, index: int, values: dict[str, Any]) -> None:
        """Hold a result of the current pass (window item ``index``) until :meth:`merge`."""
        self._parts[-1][index] = values

    def merge(self, items: list[Item]) -> None:
        """Put every rank's results of this window into ``items``, pass by pass, as one process would.

        Keys are added in the order a single process adds them (value, values, then reward), so
        the output is byte for byte the single-process one.
        """
        mine, self._parts = self._parts, []
        everyone: list[list[dict[int, dict[str, Any]]]] = self._gather(mine)
        for step in range(len(mine)):
            for parts in everyone:
                for index, values in parts[step].items():
                    items[index].result.update(values)
