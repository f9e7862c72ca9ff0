"""Reading a pass's results back from the device, once per pass.

Reading each batch back as it finishes would make the host wait for the device every batch;
the scorer queues the head's outputs of a whole pass and reads them here at the end, so a GPU
runs while the next batch is prepared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vhctl.scoring.items import Item

if TYPE_CHECKING:
    import torch

__all__ = ["Pending", "read_back"]

# A queued batch: its items, the head's output per row (B,) or (B, K), per-token values or None.
Pending = tuple[list[Item], "torch.Tensor", "list[torch.Tensor] | None"]


def read_back(pending: list[Pending], *, reward: bool) -> Iterator[tuple[Item, dict[str, Any]]]:
    """Each queued item with its new result keys: ``value`` (and ``values``), or ``reward``.

    One copy to the host for the whole pass (plus one per batch with per-token values).
    """
    import torch

    if not pending:
        return
    flat = torch.cat([out.reshape(len(batch), -1).cpu() for batch, out, _ in pending]).tolist()
    row = 0
    for batch, _, seq in pending:
        rows = torch.cat(seq).cpu().tolist() if seq is not None else None
        start = 0
        for b, item in enumerate(batch):
            values = flat[row]
            row += 1
            new: dict[str, Any] = {}
            if reward:
                new["reward"] = values[0] if len(values) == 1 else values
            else:
                new["value"] = values[0]
                if seq is not None and rows is not None:
                    new["values"] = rows[start : start + len(seq[b])]
                    start += len(seq[b])
            yield item, new
