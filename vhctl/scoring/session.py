"""One scoring session: what ``vhctl score``, ``vhctl serve`` and every torchrun rank hold.

Built from one :class:`~vhctl.scoring.options.ScoreOptions`, a session resolves the device and
dtype once, loads the checkpoint once (:func:`~vhctl.scoring.loading.load_for_scoring`), owns the
scorers (one per ``per_token`` choice, sharing one prefix cache) and finishes every result the same
way (normalisation, reward, truncation marks, JSON-safe numbers). The CLI and the server only parse
what comes in and render what comes out, so the numbers a user gets from ``score`` and ``serve``
come from the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from vhctl.errors import UsageError
from vhctl.formats import normalize
from vhctl.io.records import Record
from vhctl.scoring import distributed
from vhctl.scoring.device import resolve_device, resolve_dtype
from vhctl.scoring.items import ScoreStats
from vhctl.scoring.loading import LoadedModel, load_for_scoring
from vhctl.scoring.options import ScoreOptions
from vhctl.scoring.prefix_cache import PrefixStore
from vhctl.scoring.scorer import Scorer

__all__ = ["ScoringSession", "finish_result", "finite", "rank_device"]

WARM_UP_WORDS = (3, 40, 17)  # the synthetic records a compiled server traces before it says ready


class ScoringSession:
    """A loaded checkpoint, its scorers and how results are finished.

    Args:
        options: What to load and how to score.
        loaded: The loaded model (:meth:`open` loads it).
        device: Where token ids go (the first device of a device map).
        dtype: The model's dtype.
        group: The process group of a torchrun / accelerate launch, or None.

    Example:
        >>> session = ScoringSession.open(ScoreOptions(ckpt="critic"))
        >>> [r["value"] for r in session.score([Record(line=1, text="Hello")])]
    """

    def __init__(
        self,
        options: ScoreOptions,
        loaded: LoadedModel,
        *,
        device: torch.device,
        dtype: torch.dtype,
        group: distributed.Group | None = None,
    ) -> None:
        self.options = options
        self.loaded = loaded
        self.device = device
        self.dtype = dtype
        self.group = group
        budget = options.prefix_cache_mb << 20
        # A cache across windows is a single process's: ranks must make the same plan from the same data.
        self.prefix_store = PrefixStore(budget) if budget > 0 and group is None else None
        self._scorers: dict[bool, Scorer] = {}
        self._last: Scorer | None = None
        self.scorer()  # builds the default scorer now: it checks the options against the model

    @classmethod
    def open(
        cls, options: ScoreOptions, *, group: distributed.Group | None = None, progress: bool = False
    ) -> ScoringSession:
        """Resolve the device and dtype, load the checkpoint and build the scorer.

        Raises:
            VhctlError: the checkpoint, its tokenizer, reward adapter or normalisation cannot be
                used, or the options do not fit the model.
        """
        spec = options.device if group is None else rank_device(options, group)
        device = resolve_device(spec if options.device_map is None else "auto")
        if group is not None and device.type == "cuda" and options.device_map is None:
            torch.cuda.set_device(device)
        dtype = resolve_dtype(options.dtype, device)
        loaded = load_for_scoring(options, device, dtype, progress=progress)
        session = cls(options, loaded, device=device, dtype=dtype, group=group)
        if options.device_map is not None:
            session.device = session.scorer().input_device
        return session

    # ------------------------------------------------------------------ what was loaded

    @property
    def model(self) -> Any:
        """The value-head wrapper (with the reward adapter when one is scored)."""
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def reward(self) -> str | None:
        """The reward adapter scored with, by name, or None."""
        return self.loaded.reward

    @property
    def normalization(self) -> tuple[float, float] | None:
        return self.loaded.normalization

    @property
    def max_length(self) -> int | None:
        """Tokens kept per record (the model's limit unless ``max_length`` was given)."""
        return self.scorer().max_length

    @property
    def stats(self) -> ScoreStats:
        """The counts of the scorer used last."""
        return (self._last or self.scorer()).stats

    # ------------------------------------------------------------------ scoring

    def scorer(self, per_token: bool | None = None) -> Scorer:
        """The scorer for ``per_token`` (default: the options'), built once."""
        wanted = self.options.per_token if per_token is None else per_token
        if wanted not in self._scorers:
            options, group = self.options, self.group
            self._scorers[wanted] = Scorer(
                self.loaded.model,
                self.loaded.tokenizer,
                batch_size=options.batch_size,
                max_length=options.max_length,
                max_batch_tokens=options.max_batch_tokens,
                per_token=wanted,
                reward=options.reward is not None,
                window=options.window_records,
                prefix_sharing=options.prefix_sharing,
                skip_bad=options.skip_bad,
                mark_truncated=options.mark_truncated,
                shard=group.shard if group is not None else None,
                gather=group.all_gather if group is not None else None,
                compile=options.compile,
                prefix_store=self.prefix_store,
            )
        return self._scorers[wanted]

    def score(
        self,
        records: Iterable[Record],
        *,
        per_token: bool | None = None,
        ready: Callable[[], bool] | None = None,
        expected_records: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Score records, yielding finished results in input order (see :meth:`Scorer.score`).

        Raises:
            InputError: a bad record, when ``skip_bad`` is off (after the results before it).
        """
        scorer = self._last = self.scorer(per_token)
        for result in scorer.score(records, ready=ready, expected_records=expected_records):
            yield self.finish(result)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """A result as ``vhctl score`` writes it and ``serve`` answers it (:func:`finish_result`)."""
        return finish_result(result, self.normalization)

    def warm_up(self) -> bool:
        """Trace the compiled layers now, on synthetic records, when this session compiles from
        the start (``compile="on"``): a server says ready only once it answers at full speed.

        Returns:
            Whether anything was compiled. The counts and the prefix cache are left as they were.
        """
        scorer = self.scorer()
        if not scorer.compiles_from_start:
            return False
        records = [Record(line=i + 1, text=" ".join(["hello"] * n)) for i, n in enumerate(WARM_UP_WORDS)]
        stats = scorer.stats
        scorer.stats = ScoreStats()
        try:
            for _ in scorer.score(records, expected_records=len(records)):
                pass
        finally:
            scorer.stats = stats
            if self.prefix_store is not None:
                self.prefix_store.clear()
        return scorer.compiled


def rank_device(options: ScoreOptions, group: distributed.Group) -> str:
    """This rank's device (``cuda:LOCAL_RANK`` for auto/cuda); a device map is refused with several per node."""
    if options.device_map is not None and group.launch.local_world > 1:
        raise UsageError(
            f"--device-map spreads the model over every GPU of the node, and {group.launch.local_world} "
            "processes per node would each do that",
            hint="use one process per node with --device-map (torchrun --nproc-per-node 1), or drop it",
        )
    return distributed.local_device(options.device, group.launch)


def finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: a non-finite number (also inside a list) becomes None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def finish_result(result: dict[str, Any], normalization: tuple[float, float] | None) -> dict[str, Any]:
    """A result as ``vhctl score`` writes it (and ``serve`` answers it), in place.

    ``value`` and per-token ``values`` normalised as (x - mean) / std when a normalisation is given
    (rewards of a PEFT adapter are left as they are); every non-finite number becomes null. An
    error result is returned as it is.
    """
    if "error" in result:
        return result
    if normalization is not None:
        if result.get("value") is not None:
            result["value"] = normalize(result["value"], normalization)
        if result.get("values") is not None:
            result["values"] = [None if v is None else normalize(v, normalization) for v in result["values"]]
    for key in ("value", "reward", "values"):
        if key in result:
            result[key] = finite(result[key])
    return result
