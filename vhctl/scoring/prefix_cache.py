"""A prefix cache across windows: a prompt is computed once however its records arrive.

A trainer that posts one sample per request (OpenRLHF's current one) sends the responses of one
prompt in different requests, interleaved with other prompts, so no window holds two of them and
in-window prefix sharing (:mod:`~vhctl.scoring.shared_prefix`) finds nothing. This module keeps
the keys and values of recently scored sequences (:class:`PrefixStore`), keyed by **token
prefix** in blocks of :data:`BLOCK` tokens, as vLLM's automatic prefix caching does, so a record
sent as one text is served as well as one sent as prompt + response. A record then runs only the
tokens after its longest cached prefix, on rows of the stored keys/values (:class:`CachedPasses`).

Exactness: a token's keys and values depend only on the tokens before it, so a stored prefix is
the one a full forward would compute; the rest runs with the matching positions and mask, as
prefix sharing's responses do. The first reuse is checked against the plain forward, and a model
that disagrees is scored the plain way from then on.

The store is bounded by a byte budget (least recently used out). A sequence is stored whole when
most of it was new; a record that found most of itself cached only refreshes what it used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vhctl.scoring.batching import plan_batches
from vhctl.scoring.forwards import Forwards
from vhctl.scoring.items import Item, ScoreStats
from vhctl.scoring.plan import split

if TYPE_CHECKING:
    import torch

__all__ = ["BLOCK", "CachedPasses", "Entry", "PrefixStore", "block_hashes"]

BLOCK = 4  # tokens per block of the prefix index (the shortest prefix it can find)
STORE_WHEN_NEW = 0.5  # a sequence is stored when at least this fraction of it was computed anew

# Takes a computed batch: its items and the last hidden states (B, H).
Queue = Callable[[list[Item], "torch.Tensor", None], None]


def block_hashes(ids: list[int], limit: int) -> list[int]:
    """Chained hashes of the full blocks of ``ids[:limit]``: entry ``j`` stands for ``ids[: BLOCK * (j + 1)]``."""
    hashes: list[int] = []
    value = 0
    for end in range(BLOCK, limit + 1, BLOCK):
        value = hash((value, tuple(ids[end - BLOCK : end])))
        hashes.append(value)
    return hashes


@dataclass
class Entry:
    """One stored sequence: its token ids and each layer's keys and values ``(1, heads, n, dim)``."""

    ids: tuple[int, ...]
    layers: list[tuple[Any, Any]]
    nbytes: int
    keys: list[tuple[str, int]] = field(default_factory=list)  # its places in the index


class PrefixStore:
    """Keys and values of recent sequences, within ``budget`` bytes, least recently used out.

    Args:
        budget: Bytes the stored tensors may take (on the model's device).

    Attributes:
        bytes: Bytes held now.
        hits: Lookups that found a cached prefix.
        reused_tokens: Tokens those lookups did not compute again.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.hits = 0
        self.reused_tokens = 0
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._index: dict[tuple[str, int], int] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, namespace: str, ids: list[int], hashes: list[int], limit: int
    ) -> tuple[Entry | None, int]:
        """The entry holding the longest cached prefix of ``ids`` (at most ``limit`` tokens), and its length.

        ``hashes`` are ``block_hashes(ids, limit)``. A hit is at least one block long and is
        extended token by token past the last full block.
        """
        found, depth = None, 0
        for j, value in enumerate(hashes):
            key = self._index.get((namespace, value))
            if key is None:
                break
            found, depth = key, BLOCK * (j + 1)
        if found is None:
            return None, 0
        entry = self._entries[found]
        if list(entry.ids[:depth]) != ids[:depth]:  # a hash collision: not this prefix
            return None, 0
        end = min(len(entry.ids), limit)
        while depth < end and entry.ids[depth] == ids[depth]:
            depth += 1
        self._entries.move_to_end(found)
        return entry, depth

    def add(self, namespace: str, ids: list[int], layers: list[tuple[Any, Any]]) -> None:
        """Store a sequence's keys and values (evicting the least recently used to make room)."""
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if nbytes > self.budget:
            return
        while self._entries and self.bytes + nbytes > self.budget:
            self._evict()
        key = self._next
        self._next += 1
        entry = Entry(tuple(ids), layers, nbytes)
        for value in block_hashes(ids, len(ids)):
            place = (namespace, value)
            self._index[place] = key  # the newest entry serves a block they share
            entry.keys.append(place)
        self._entries[key] = entry
        self.bytes += nbytes

    def cached_blocks(self, namespace: str, hashes: list[int]) -> int:
        """How many of the leading blocks ``hashes`` stand for are in the store (no recency change)."""
        count = 0
        while count < len(hashes) and (namespace, hashes[count]) in self._index:
            count += 1
        return count

    def clear(self) -> None:
        """Forget everything (the counts too)."""
        self._entries.clear()
        self._index.clear()
        self.bytes = self.hits = self.reused_tokens = 0

    def _evict(self) -> None:
        key, entry = self._entries.popitem(last=False)
        self.bytes -= entry.nbytes
        for place in entry.keys:
            if self._index.get(place) == key:
                del self._index[place]


@dataclass
class _Row:
    item: Item
    entry: Entry | None
    cached: int

    @property
    def rest(self) -> int:
        return len(self.item.ids) - self.cached


class CachedPasses:
    """Runs a window's causal records on the prefix store, and stores what they computed.

    Args:
        forwards: The model's forwards.
        store: The prefix store (shared by the scorers of a session).
        overhead: The fixed cost of a pass, in tokens (for cutting rows into batches).

    Attributes:
        enabled: Cleared when the check on first reuse fails: the scorer goes back to its plain path.
    """

    def __init__(self, forwards: Forwards, store: PrefixStore, *, overhead: int) -> None:
        self.forwards = forwards
        self.store = store
        self.enabled = True
        self.verified = False
        self._overhead = overhead

    def run(
        self,
        items: list[Item],
        namespace: str,
        *,
        budget: int,
        stats: ScoreStats,
        queue: Queue,
        fallback: Callable[[list[Item]], None],
    ) -> None:
        """Score ``items`` (their last hidden states go to ``queue``) in up to two rounds.

        A record whose longest prefix is shared with an earlier record of the window, further than
        the store has it, waits for the second round, when that record's keys and values are stored.
        """
        first, later = self._rounds(items, namespace, defer=True)
        for round_items in (first, later):
            if not round_items:
                continue
            if not self.enabled:
                fallback([item for item, _ in round_items])
                continue
            rows = []
            for item, hashes in round_items:
                entry, cached = self.store.lookup(namespace, item.ids, hashes, len(item.ids) - 1)
                rows.append(_Row(item, entry, cached))
                if cached:
                    self.store.hits += 1
                    self.store.reused_tokens += cached
                    stats.shared_prompts += 1
                    stats.shared_tokens += cached
            self._round(rows, namespace, budget=budget, queue=queue, fallback=fallback)

    def _rounds(
        self, items: list[Item], namespace: str, *, defer: bool
    ) -> tuple[list[tuple[Item, list[int]]], list[tuple[Item, list[int]]]]:
        """This round's records and the next round's: those whose prefix an earlier record of the
        window shares further than the store has it, when what they would not compute again is
        worth more than the extra forward pass."""
        now: list[tuple[Item, list[int]]] = []
        later: list[tuple[Item, list[int]]] = []
        seen: set[int] = set()
        gain = 0
        for item in items:
            hashes = block_hashes(item.ids, len(item.ids) - 1)
            shared = 0
            while shared < len(hashes) and hashes[shared] in seen:
                shared += 1
            cached = self.store.cached_blocks(namespace, hashes)
            if defer and shared > cached:
                later.append((item, hashes))
                gain += BLOCK * (shared - cached)
            else:
                now.append((item, hashes))
                seen.update(hashes)
        if gain <= self._overhead:  # not worth a second pass: everything in one
            now, later = now + later, []
            now.sort(key=lambda pair: pair[0].index)
        return now, later

    def _round(
        self, rows: list[_Row], namespace: str, *, budget: int, queue: Queue,
        fallback: Callable[[list[Item]], None],
    ) -> None:  # fmt: skip
        """Length-sorted batches of the rows' uncached tokens, within the budget."""
        rows = sorted(rows, key=lambda row: row.rest)
        longest = max(row.cached for row in rows)
        sizes = plan_batches(
            [row.rest for row in rows],
            max_rows=lambda width: min(budget // width, 4 * budget // (width + longest)),
            overhead=self._overhead,
        )
        for chunk in split(rows, sizes):
            if not self.enabled:
                fallback([row.item for row in chunk])
                continue
            hidden, cont, cache = self._forward(chunk)
            if (
                not self.verified
                and any(row.cached for row in chunk)
                and not self._verify(chunk, hidden, cont)
            ):
                self.enabled = False
                fallback([row.item for row in chunk])
                continue
            last, _ = self.forwards.gather(hidden, cont, False)
            queue([row.item for row in chunk], last, None)
            self._store(chunk, namespace, cache)

    def _forward(self, chunk: list[_Row]) -> tuple[torch.Tensor, Any, Any]:
        """Hidden states of the rows' uncached tokens on their cached prefixes, and the new cache."""
        import torch
        from transformers import DynamicCache

        forwards = self.forwards
        cont = forwards.pad([row.item.ids[row.cached :] for row in chunk])
        width = max(row.cached for row in chunk)
        if width == 0:
            hidden, cache = forwards.causal(cont.ids, cont.mask if cont.padded else None, use_cache=True)
            return hidden, cont, cache
        layers = []
        sample = next(row.entry for row in chunk if row.entry is not None)
        for layer, (k0, v0) in enumerate(sample.layers):
            keys = k0.new_zeros((len(chunk), k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((len(chunk), v0.shape[1], width, v0.shape[3]))
            for b, row in enumerate(chunk):
                if row.entry is not None and row.cached:
                    k, v = row.entry.layers[layer]
                    keys[b, :, : row.cached] = k[0, :, : row.cached]
                    values[b, :, : row.cached] = v[0, :, : row.cached]
            layers.append((keys, values))
        device = forwards.parts.device
        offsets = torch.tensor([row.cached for row in chunk], dtype=torch.long, device=device)
        prefix_mask = (torch.arange(width, device=device)[None, :] < offsets[:, None]).long()
        positions = torch.arange(cont.ids.shape[1], device=device)[None, :] + offsets[:, None]
        extra: dict[str, Any] = {
            forwards.parts.cache_kw: DynamicCache(ddp_cache_data=layers),
            "use_cache": True,
            "position_ids": positions * cont.mask,  # padding gets position 0 (a valid index)
        }
        hidden, cache = forwards.causal(cont.ids, torch.cat([prefix_mask, cont.mask], dim=1), **extra)
        return hidden, cont, cache

    def _store(self, chunk: list[_Row], namespace: str, cache: Any) -> None:
        """Keep each mostly new row's keys and values (its cached prefix and what it computed)."""
        import torch

        layers = getattr(cache, "layers", None)
        if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
            return
        width = max(row.cached for row in chunk)
        for b, row in enumerate(chunk):
            length = len(row.item.ids)
            if row.rest < STORE_WHEN_NEW * length:
                continue
            kept = []
            for layer in layers:
                keys = layer.keys[b : b + 1, :, width : width + row.rest]
                values = layer.values[b : b + 1, :, width : width + row.rest]
                if row.cached:
                    keys = torch.cat([layer.keys[b : b + 1, :, : row.cached], keys], dim=2)
                    values = torch.cat([layer.values[b : b + 1, :, : row.cached], values], dim=2)
                kept.append((keys.clone(), values.clone()))
            self.store.add(namespace, row.item.ids, kept)

    def _verify(self, chunk: list[_Row], hidden: torch.Tensor, cont: Any) -> bool:
        """Check once that a reused prefix gives the plain forward's value (on the row with the
        most padding between its prefix and its tokens)."""
        width = max(row.cached for row in chunk)
        b = max((b for b, row in enumerate(chunk) if row.cached), key=lambda b: width - chunk[b].cached)
        self.verified = self.forwards.matches_plain(chunk[b].item, hidden[b, cont.lengths_list[b] - 1])
        return self.verified
