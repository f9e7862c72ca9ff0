"""Prefix sharing: a prompt shared by several records of a window is computed once.

Best-of-n input has one prompt and n responses. The prompts of a pack run once with
``use_cache=True``; the responses then run on rows of that cache, replicated along the batch,
with the matching position ids and attention mask. Values match the plain padded forward within
float noise (about 1e-6 in float32).

How a model builds positions and masks decides whether cache reuse is exact, so the first use is
checked against the plain forward on the most sensitive row: if several prompts per forward is
what fails, prompts then run one at a time; if sharing itself fails (or the cache cannot be
replicated), the records are scored the plain way from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vhctl.modeling.cache import cache_rows_selectable
from vhctl.scoring.batching import plan_batches
from vhctl.scoring.cache import select_cache
from vhctl.scoring.forwards import Forwards, Padded
from vhctl.scoring.items import Item
from vhctl.scoring.plan import PromptGroup, split

if TYPE_CHECKING:
    import torch

__all__ = ["Queue", "SharedPrefix", "SharedPrompts"]

# Takes a computed batch: its items, the last hidden states (B, H), per-token values or None.
Queue = Callable[[list[Item], "torch.Tensor", "list[torch.Tensor] | None"], None]


@dataclass
class SharedPrompts:
    """The prompts of a pack, run once: their cache and padded batch."""

    cache: Any
    prompts: Padded
    many: bool


class SharedPrefix:
    """Runs prompt packs with a shared cache, and remembers what the first-use check decided.

    Args:
        forwards: The model's forwards.
        enabled: Sharing is possible at all (a backbone, a cache whose rows can be selected).
        overhead: The fixed cost of a pass, in tokens (for cutting responses into batches).

    Attributes:
        enabled: Cleared when this model's cache cannot be reused: later windows run plain.
        multi_prompt: Several prompts per cached forward (cleared if the first-use check fails).
        verified: Cache reuse was checked against the plain path (on first use).
    """

    def __init__(self, forwards: Forwards, *, enabled: bool, overhead: int) -> None:
        self.forwards = forwards
        self.enabled = enabled
        self.multi_prompt = True
        self.verified = False
        self._overhead = overhead

    def run(
        self,
        pack: list[PromptGroup],
        per_token: bool,
        *,
        budget: int,
        queue: Queue,
        fallback: Callable[[list[Item]], None],
        compute: bool = True,
    ) -> None:
        """Run the prompts of a pack once with a cache, then every response on that cache.

        Computed batches go to ``queue``; records that cannot share (the check failed) go to
        ``fallback``, which scores them the plain way. With ``compute=False`` (a pack another rank
        scores) only the first-use checks run, so that every rank takes the same decisions a
        single process takes; nothing is queued.
        """
        if not compute and self.verified:
            return
        prompts = self.forwards.pad([group.prompt for group in pack])
        many = len(pack) > 1
        prompt_hidden, cache = self.forwards.causal(
            prompts.ids, prompts.mask if many else None, use_cache=True
        )
        if not cache_rows_selectable(cache):
            # This model's cache cannot be replicated along the batch: score these records the plain way.
            self.enabled = False
            if compute:
                fallback([item for group in pack for item in group.items])
            return
        shared = SharedPrompts(cache, prompts, many)
        if not self.verified and not self._verify(pack, shared):
            if many:  # several prompts in one batch is what failed: try them one by one
                self.multi_prompt = False
                for group in pack:
                    self.run(
                        [group], per_token, budget=budget, queue=queue, fallback=fallback, compute=compute
                    )
            else:
                self.enabled = False
                if compute:
                    fallback(pack[0].items)
            return
        if compute:
            self._responses(pack, shared, prompt_hidden, per_token, budget=budget, queue=queue)

    def _responses(
        self,
        pack: list[PromptGroup],
        shared: SharedPrompts,
        prompt_hidden: torch.Tensor,
        per_token: bool,
        *,
        budget: int,
        queue: Queue,
    ) -> None:
        """Every response of the pack on the prompt cache, in length-sorted batches."""
        import torch

        prompts = shared.prompts
        prompt_values = self.forwards.values(prompt_hidden) if per_token else None
        rows = sorted(
            ((g, item) for g, group in enumerate(pack) for item in group.items),
            key=lambda row: len(row[1].ids) - row[1].prefix_len,
        )
        longest_prompt = max(prompts.lengths_list)
        sizes = plan_batches(
            [len(item.ids) - item.prefix_len for _, item in rows],
            # the responses' tokens within the budget, and their cached context within 4 budgets
            max_rows=lambda width: min(budget // width, 4 * budget // (width + longest_prompt)),
            overhead=self._overhead,
        )
        for chunk in split(rows, sizes):
            hidden, cont = self._chunk(shared, chunk)
            last, cont_values = self.forwards.gather(hidden, cont, per_token)
            seq = None
            if cont_values is not None and prompt_values is not None:
                seq = [
                    torch.cat([prompt_values[g, : prompts.lengths_list[g]], values])
                    for (g, _), values in zip(chunk, cont_values, strict=True)
                ]
            queue([item for _, item in chunk], last, seq)

    def _chunk(self, shared: SharedPrompts, chunk: list[tuple[int, Item]]) -> tuple[torch.Tensor, Padded]:
        """Hidden states of the responses in ``chunk`` ((prompt index, item) rows) on the prompt cache."""
        import torch

        forwards = self.forwards
        index = forwards.upload(torch.tensor([g for g, _ in chunk], dtype=torch.long))
        cont = forwards.pad([item.ids[item.prefix_len :] for _, item in chunk])
        extra: dict[str, Any] = {
            forwards.parts.cache_kw: select_cache(shared.cache, index),
            "use_cache": True,
        }
        if shared.many:
            offsets = shared.prompts.lengths.index_select(0, index)
            positions = (
                torch.arange(cont.ids.shape[1], device=forwards.parts.device)[None, :] + offsets[:, None]
            )
            extra["position_ids"] = positions * cont.mask  # padding gets position 0 (a valid index)
        attention = torch.cat([shared.prompts.mask.index_select(0, index), cont.mask], dim=1)
        hidden, _ = forwards.causal(cont.ids, attention, **extra)
        return hidden, cont

    def _verify(self, pack: list[PromptGroup], shared: SharedPrompts) -> bool:
        """Check once that the cached path gives the plain path's value, on the most sensitive row.

        Cache reuse depends on how a model builds positions and masks; an architecture that does it
        some other way (e.g. a local attention window that counts padding) is caught here and scored
        the plain way instead of wrongly.
        """
        # The most sensitive row: most padding after its prompt, then the shortest response.
        g = min(range(len(pack)), key=lambda i: len(pack[i].prompt))
        item = min(pack[g].items, key=lambda i: len(i.ids) - i.prefix_len)
        hidden, cont = self._chunk(shared, [(g, item)])
        ok = self.forwards.matches_plain(item, hidden[0, cont.lengths_list[0] - 1])
        if ok and (len(pack) == 1 or self.multi_prompt):
            self.verified = True
        return ok
