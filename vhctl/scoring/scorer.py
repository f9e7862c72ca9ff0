"""The :class:`Scorer`: reads records in windows and runs each window's plan, in input order.

It orchestrates the other modules of :mod:`vhctl.scoring`: a window is tokenized
(:mod:`~vhctl.scoring.tokenizing`), split into prompt groups and length-sorted batches
(:mod:`~vhctl.scoring.plan`), run as plain, seq2seq or shared-prefix forwards
(:mod:`~vhctl.scoring.forwards`, :mod:`~vhctl.scoring.shared_prefix`) in a values pass and, for
rewards, a reward pass (:mod:`~vhctl.scoring.adapters`), with the GELU swap on
(:mod:`~vhctl.scoring.activations`), compiled for long inputs (:mod:`~vhctl.scoring.compiled`),
read back once per pass (:mod:`~vhctl.scoring.readback`) and, under data parallelism, shared
between ranks (:mod:`~vhctl.scoring.sharding`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from vhctl.errors import InputError, UsageError
from vhctl.io.records import Record
from vhctl.modeling.cache import prefix_sharing_supported
from vhctl.scoring.activations import fused_gelus, gelu_mode, tanh_gelus
from vhctl.scoring.adapters import check_reward, policy_adapter, reward_adapter
from vhctl.scoring.batching import pass_overhead, round_up
from vhctl.scoring.compiled import BUCKET, CompilePolicy, check_compile_choice, model_break_even
from vhctl.scoring.forwards import Forwards, torch_stack_last
from vhctl.scoring.items import Item, ScoreStats, results
from vhctl.scoring.model_parts import ModelParts, decoder_start_id, find_parts
from vhctl.scoring.options import WINDOW_PER_BATCH
from vhctl.scoring.plan import PromptGroup, group_prompts, length_batches, prompt_packs
from vhctl.scoring.prefix_cache import CachedPasses, PrefixStore
from vhctl.scoring.readback import Pending, read_back
from vhctl.scoring.sharding import Shards, check_shard
from vhctl.scoring.shared_prefix import SharedPrefix
from vhctl.scoring.tokenizing import RecordEncoder

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["WINDOW_PER_BATCH", "Scorer"]


class Scorer:
    """Scores records with a value-head model, streaming, results in input order.

    Args:
        model: A value-head wrapper (``AutoModelForCausalLMWithValueHead`` or the seq2seq one, from
            vhctl or TRL): ``pretrained_model`` (a transformers model or a PeftModel), ``v_head``,
            and for rewards ``score``, ``rm_adapter_name``, ``supports_rm_adapter``. It is put in
            ``eval()`` mode; its device and dtype are used as they are.
        tokenizer: The checkpoint's tokenizer.
        batch_size: Sequences per forward pass for the longest sequences of a window; shorter
            ones are packed up to the same number of tokens (see ``max_batch_tokens``).
        max_length: Keep at most this many tokens of each sequence (its end). Default: the model's
            position limit when the config has one, else no limit.
        per_token: Also return ``values``, the value at every token.
        reward: Also return ``reward`` from the PEFT reward adapter of this name (``True``: the
            model's ``rm_adapter_name``).
        window: Records read ahead, sorted and batched together (memory is bounded by it).
            Default ``batch_size * WINDOW_PER_BATCH``.
        prefix_sharing: Compute a prompt shared by several records of a window once.
        max_batch_tokens: Padded tokens per forward pass. Default: ``batch_size`` times the
            longest sequence of the window, so memory stays what ``batch_size`` of those need.
        skip_bad: Give a record that cannot be tokenized an error result instead of raising.
        shard: ``(rank, world)`` for data-parallel scoring: every rank is given the same records and
            makes the same windowing, sorting and batching decisions, but computes only the batches
            (or prompt packs) whose running index ``% world == rank``; ``gather`` then merges the
            ranks' results, so every rank yields every result, each computed in exactly the batch a
            single process would have put it in (the same floats, for the same thread count).
            None or a world of 1: everything is computed here.
        gather: With ``shard``: a collective that takes this rank's partial results of a window
            (any picklable object) and returns every rank's, in rank order (e.g.
            ``vhctl.distributed.Group.all_gather``). Called once per window, on every rank.
        mark_truncated: Add ``"truncated": true`` to the result of a record cut to ``max_length``
            (a server answers each request; ``vhctl score`` only counts them, in ``stats``).
        fuse_activations: While scoring, run Python-written tanh-approximate GELUs (GPT-2's
            ``gelu_new``, ``gelu_fast``, Bloom's) with fewer passes over memory. True (or
            ``"exact"``): the same ops in place, bit for bit the model's own values. ``"kernel"``:
            PyTorch's fused kernel, faster but about 5e-7 apart per element in float32, which can
            move a 12-layer model's values past 1e-5 (opt-in). False: as the model is. The model
            is restored after each window. See :mod:`vhctl.scoring.activations`.
        compile: ``"on"``: run the model's repeated blocks compiled (``torch.compile``, one graph
            with dynamic shapes for every layer and batch; widths padded to multiples of 16). The
            first compiled batch waits for the compile: 20 to 30 s for a 124M model on 2
            CPU cores, a few seconds with the on-disk cache of an earlier job.
            ``"off"``: eager. ``"auto"``: compile once the tokens to score make it pay: from the
            start when ``score``'s ``expected_records`` says the input is that long, else once
            that many tokens have been scored. Values stay within float noise (about 1e-6 in
            float32) of the eager ones; a compile that fails warns once and scoring goes on
            eagerly. See :mod:`vhctl.scoring.compiled`.
        prefix_store: A :class:`~vhctl.scoring.prefix_cache.PrefixStore` to keep the keys and values
            of scored sequences in, across windows: a record then computes only what follows its
            longest stored prefix (a server's best-of-n samples that arrive in different requests).
            Used by the values and reward passes of causal models that take position ids, not by
            per-token scoring nor under ``shard``; runs eagerly. None: no store.

    Attributes:
        stats: A :class:`ScoreStats`, updated as results are produced.

    Raises:
        UsageError: bad sizes, or a reward asked for from a model with no such adapter.

    Example:
        >>> scorer = Scorer(model, tokenizer, batch_size=16)
        >>> for result in scorer.score(iter_records(open("in.jsonl", "rb"))):
        ...     print(result["value"])
    """

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        per_token: bool = False,
        reward: bool | str | None = None,
        window: int | None = None,
        prefix_sharing: bool = True,
        max_batch_tokens: int | None = None,
        skip_bad: bool = False,
        fuse_activations: bool | str = True,
        mark_truncated: bool = False,
        shard: tuple[int, int] | None = None,
        gather: Callable[[Any], list[Any]] | None = None,
        compile: str = "auto",
        prefix_store: PrefixStore | None = None,
    ) -> None:
        _check_arguments(tokenizer, batch_size, max_length, max_batch_tokens)
        check_shard(shard, gather)
        self._mark_truncated = mark_truncated
        self._shards: Shards | None = None  # None: everything is computed here
        if shard is not None and shard[1] > 1 and gather is not None:
            self._shards = Shards(shard[0], shard[1], gather)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.window = max(window if window is not None else batch_size * WINDOW_PER_BATCH, 1)
        self.per_token = per_token
        self.max_batch_tokens = max_batch_tokens
        self.skip_bad = skip_bad
        self.stats = ScoreStats()
        self._budget = batch_size  # padded tokens per forward, set per window
        self._pending: list[Pending] = []

        model.eval()
        self._parts = parts = find_parts(model)
        self._forwards = Forwards(
            parts, model.v_head, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        )
        self._overhead = pass_overhead(parts.device.type)  # a forward pass's fixed cost, in tokens
        choice = check_compile_choice(compile)
        self._compile = CompilePolicy(
            choice, model_break_even(parts.hf, parts.device.type) if choice == "auto" else 0
        )
        self._bucket = 1  # widths are planned (and padded) to multiples of this: BUCKET when compiled
        self._takes_positions = parts.takes_positions  # several prompts per forward need position ids
        self._shared = SharedPrefix(
            self._forwards,
            # decided here, from the model's classes: a recurrent or convolution state cannot be shared
            enabled=prefix_sharing and parts.backbone is not None and prefix_sharing_supported(parts.hf)[0],
            overhead=self._overhead,
        )
        self._encoder = RecordEncoder(
            tokenizer,
            seq2seq=parts.seq2seq,
            max_length=_length_limit(max_length, parts),
            decoder_start=decoder_start_id(parts.hf) if parts.seq2seq else 0,
        )
        self._reward_name = check_reward(model, parts, reward) if reward else None
        gelus = gelu_mode(fuse_activations)
        self._tanh_gelus = tanh_gelus(parts.hf, gelus) if gelus is not None else []
        self._cached: CachedPasses | None = None
        storable = self._shared.enabled and parts.takes_positions and not parts.sliding_window
        if prefix_store is not None and storable and not per_token and self._shards is None:
            self._cached = CachedPasses(self._forwards, prefix_store, overhead=self._overhead)

    # ------------------------------------------------------------------ public API

    @property
    def input_device(self) -> torch.device:
        """Where token ids go: the input embeddings' device (the first GPU of a device map)."""
        return self._parts.device

    @property
    def compiled(self) -> bool:
        """The current window runs compiled (False before ``auto`` decides, or after a failed compile)."""
        return self._forwards.compiling and not self._forwards.compile_failed

    @property
    def compiles_from_start(self) -> bool:
        """The first window runs compiled (``compile="on"`` on a model whose layers can be)."""
        return self._compile.on and self._forwards.can_compile

    @property
    def uses_prefix_store(self) -> bool:
        """Records run on the prefix store (see ``prefix_store``)."""
        return self._cached is not None and self._cached.enabled

    @property
    def max_length(self) -> int | None:
        """Tokens kept of each sequence (its end): the argument, else the model's limit; None: all."""
        return self._encoder.max_length

    @max_length.setter
    def max_length(self, value: int | None) -> None:
        self._encoder.max_length = value

    def score(
        self,
        records: Iterable[Record],
        *,
        ready: Callable[[], bool] | None = None,
        expected_records: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Score records, yielding one result dict per record in input order.

        A result is ``{"id"?: ..., "value": float, "reward"?: float, "values"?: [float, ...]}``,
        or ``{"line": N, "id"?: ..., "error": "..."}`` for a bad record (``skip_bad``). Results come
        window by window, so the first ones appear long before a long input ends.

        ``ready`` says whether another record can be read without waiting (e.g.
        :meth:`vhctl.io.records.LineReader.ready`). With it, a window also ends at a pause in the
        input, so the records that have come are scored while the producer makes more; the batches
        (and so the last bits of the values) then depend on the timing. Without it, every window
        is full until the input ends, and the output is the same on every run.

        ``expected_records``: about how many records the input holds (e.g. a file's lines), for
        ``compile="auto"``; None when unknown.

        Raises:
            InputError: a bad line, when ``skip_bad`` is off. The results of all lines before it
                are yielded first.
        """
        iterator = iter(records)
        self._compile.start_input(expected_records)
        while True:
            window, pending, exhausted = self._read_window(iterator, ready)
            items, failed = self._encoder.window(window, skip_bad=self.skip_bad, stats=self.stats)
            if failed is not None:
                pending = failed
            if items:
                yield from self._process(items)
            if pending is not None:
                raise pending
            if exhausted:
                return

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Values of a few plain texts (a convenience for notebooks and tests)."""
        records = (Record(line=i + 1, text=text) for i, text in enumerate(texts))
        return [result["value"] for result in self.score(records, expected_records=len(texts))]

    # ------------------------------------------------------------------ windows

    def _read_window(
        self, iterator: Iterator[Record], ready: Callable[[], bool] | None
    ) -> tuple[list[Record], InputError | None, bool]:
        """The next window's records, the bad line that ended it (if any), and whether the input ended."""
        window: list[Record] = []
        while len(window) < self.window:
            if window and ready is not None and not ready():
                break  # a pause in the input: score what has come
            try:
                window.append(next(iterator))
            except StopIteration:
                return window, None, True
            except InputError as exc:  # a bad line from iter_records: score what came before it first
                return window, exc, False
        return window, None, False

    def _process(self, items: list[Item]) -> Iterator[dict[str, Any]]:
        """Score a tokenized window (every pass, every rank's share) and yield its results in order."""
        import torch

        good = [item for item in items if item.error is None]
        for item in good:
            if item.record.has_id:
                item.result["id"] = item.record.id
        if good:
            sharing = self._shared.enabled and not self.uses_prefix_store  # the store shares across windows
            groups, plain = group_prompts(good, self.stats) if sharing else ([], good)
            self._start_window(good)
            longest = max(round_up(item.tokens, self._bucket) for item in good)
            self._budget = self.max_batch_tokens or self.batch_size * longest
            with torch.inference_mode(), fused_gelus(self._tanh_gelus):
                with policy_adapter(self.model, self._parts):
                    self._run_pass(groups, plain, reward=False)
                if self._reward_name is not None:
                    with reward_adapter(self.model, self._parts, self._reward_name):
                        self._run_pass(groups, plain, reward=True)
            if self._shards is not None:
                self._shards.merge(items)
        yield from results(items, self.stats, mark_truncated=self._mark_truncated)

    def _start_window(self, good: list[Item]) -> None:
        """Compiled or eager, for this window: the policy's choice (the same on every rank).

        The plan follows the policy even after a failed compile made the forwards eager, so
        every rank of a data-parallel run keeps making the same plan.
        """
        compiled = self._compile.window(sum(item.tokens for item in good), len(good))
        compiled = compiled and self._forwards.can_compile
        self._forwards.compiling = compiled
        self._bucket = BUCKET if compiled else 1

    # ------------------------------------------------------------------ passes

    def _run_pass(self, groups: list[PromptGroup], plain: list[Item], *, reward: bool) -> None:
        """One pass over the window (values, or rewards); results are read back once, at the end."""
        per_token = self.per_token and not reward
        self._pending = []
        if self._shards is not None:
            self._shards.start_pass()
        if self.uses_prefix_store and not per_token:
            assert self._cached is not None
            self._cached.run(
                plain,
                f"reward:{self._reward_name}" if reward else "values",
                budget=self._budget,
                stats=self.stats if not reward else ScoreStats(),  # counted once, in the values pass
                queue=lambda batch, last, seq: self._queue(batch, last, seq, reward=reward),
                fallback=lambda items: self._run_plain_items(items, per_token, reward=reward),
            )
        elif self._parts.seq2seq:
            for batch in self._batches(plain, lambda i: (len(i.ids), len(i.dec or ()))):
                if self._owns_next():
                    self._queue(batch, *self._forwards.seq2seq(batch, per_token), reward=reward)
        else:
            for batch in self._batches(plain, lambda i: len(i.ids)):
                if self._owns_next():
                    self._queue(batch, *self._forward_plain(batch, per_token), reward=reward)
            packs = prompt_packs(
                groups,
                budget=self._budget,
                multi_prompt=self._takes_positions and self._shared.multi_prompt,
                sliding_window=self._parts.sliding_window,
            )
            for pack in packs:
                # Another rank scores a pack it does not own, but the first-use check of prompt
                # sharing still runs here: what it decides changes the plan of later windows.
                self._shared.run(
                    pack,
                    per_token,
                    budget=self._budget,
                    queue=lambda batch, last, seq: self._queue(batch, last, seq, reward=reward),
                    fallback=lambda items: self._run_plain_items(items, per_token, reward=reward),
                    compute=self._owns_next(),
                )
        self._read_back(reward=reward)

    def _batches(self, items: list[Item], length: Callable[[Item], Any]) -> Iterator[list[Item]]:
        return length_batches(
            items, length, budget=self._budget, overhead=self._overhead, bucket=self._bucket
        )

    def _forward_plain(
        self, batch: list[Item], per_token: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        return self._forwards.plain(batch, per_token)

    def _run_plain_items(self, items: list[Item], per_token: bool, *, reward: bool) -> None:
        """Score records the plain way (those whose prompt sharing had to be given up)."""
        for batch in self._batches(items, lambda i: len(i.ids)):
            self._queue(batch, *self._forward_plain(batch, per_token), reward=reward)

    def _owns_next(self) -> bool:
        """Whether this rank computes the next batch or prompt pack of the plan (always, unsharded)."""
        return self._shards is None or self._shards.owns_next()

    @property
    def _multi_prompt(self) -> bool:
        """Several prompts per cached forward (False once the first-use check found they differ)."""
        return self._shared.multi_prompt

    # ------------------------------------------------------------------ results

    def _queue(
        self, batch: list[Item], last: torch.Tensor, seq: list[torch.Tensor] | None, *, reward: bool
    ) -> None:
        """Apply the head (value or reward) on the device and keep the results for :meth:`_read_back`."""
        if reward:
            score = self.model.score
            out = score(last.to(device=score.weight.device, dtype=score.weight.dtype)).float()
            self._pending.append((batch, out, None))
        elif seq is not None:
            self._pending.append((batch, torch_stack_last(seq), seq))
        else:
            self._pending.append((batch, self._forwards.values(last), None))

    def _read_back(self, *, reward: bool) -> None:
        """Copy the pass's results to the host into the items (or, sharded, this rank's share)."""
        for item, new in read_back(self._pending, reward=reward):
            if self._shards is None:
                item.result.update(new)
            else:  # merged with the other ranks' in Shards.merge
                self._shards.keep(item.index, new)
        self._pending = []


def _check_arguments(
    tokenizer: PreTrainedTokenizerBase | None,
    batch_size: int,
    max_length: int | None,
    max_batch_tokens: int | None,
) -> None:
    if tokenizer is None:
        raise UsageError(
            "scoring needs a tokenizer, and this model has none", hint="save one with the checkpoint"
        )
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if max_length is not None and max_length < 1:
        raise UsageError(f"max length must be at least 1, got {max_length}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise UsageError(f"max batch tokens must be at least 1, got {max_batch_tokens}")


def _length_limit(max_length: int | None, parts: ModelParts) -> int | None:
    """The tokens kept per sequence: the one asked for (within the model's limit), else the limit.

    Raises:
        UsageError: ``max_length`` is over the model's position limit (causal models).
    """
    limit = parts.position_limit
    if max_length is not None and limit is not None and max_length > limit and not parts.seq2seq:
        raise UsageError(
            f"max length {max_length} is over the model's limit of {limit} positions",
            hint=f"use --max-length {limit} or less",
        )
    return max_length if max_length is not None else (None if parts.seq2seq else limit)
