"""The one options type of scoring: ``vhctl score``, ``vhctl serve``, torchrun ranks and the library.

A scoring option is a field here, a flag in ``vhctl/cli/_options.py`` and a line in the docs;
everything between (loading, the scorer, the server's worker) reads it from this object.
"""

from __future__ import annotations

from dataclasses import dataclass

from vhctl.constants import SERVE_PREFIX_CACHE_MB
from vhctl.errors import UsageError

__all__ = [
    "DEFAULT_REWARD",
    "DEVICE_MAP_CHOICES",
    "SERVE_PREFIX_CACHE_MB",
    "WINDOW_PER_BATCH",
    "ScoreOptions",
    "check_device_map",
    "reward_choice",
]

DEFAULT_REWARD = "reward_adapter"
DEVICE_MAP_CHOICES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's strategies
WINDOW_PER_BATCH = 32  # default window = batch_size * WINDOW_PER_BATCH records


@dataclass(frozen=True)
class ScoreOptions:
    """How to load a checkpoint and score with it.

    Attributes:
        ckpt: A checkpoint folder, hub id or ``vhctl:tiny``.
        reward: None for no reward, ``""`` for the checkpoint's only (or default) reward adapter,
            else the adapter's name.
        per_token: Also return ``values``, one per token.
        batch_size: Sequences per forward pass for the longest sequences of a window.
        max_length: Tokens kept per sequence (its end); None: the model's limit.
        max_batch_tokens: Padded tokens per forward pass; None: ``batch_size`` x the longest.
        window: Records read ahead and batched together; None: ``batch_size * WINDOW_PER_BATCH``.
        device, device_map, dtype: Where and how the model runs (``--device``, ``--device-map``,
            ``--dtype``).
        skip_bad: A bad record gets an error result instead of ending the run.
        mark_truncated: Add ``"truncated": true`` to a result cut to ``max_length`` (a server
            answers each request; ``vhctl score`` counts them in its summary).
        prefix_sharing: Compute a prompt shared by records of a window once.
        prefix_cache_mb: Keep the keys/values of recently scored token prefixes, up to this many
            MiB, so that a prompt is computed once however its records arrive (0: off; ``vhctl
            serve`` keeps one, see :mod:`vhctl.scoring.prefix_cache`).
        normalize: Normalise values with the checkpoint's reward normalisation.
        compile: ``auto``, ``on`` or ``off`` (:mod:`vhctl.scoring.compiled`).
        revision, token, allow_pickle, trust_remote_code: How the checkpoint is loaded.
    """

    ckpt: str
    reward: str | None = None
    per_token: bool = False
    batch_size: int = 16
    max_length: int | None = None
    max_batch_tokens: int | None = None
    window: int | None = None
    device: str = "auto"
    device_map: str | None = None
    dtype: str = "auto"
    skip_bad: bool = False
    mark_truncated: bool = False
    prefix_sharing: bool = True
    prefix_cache_mb: int = 0
    normalize: bool = False
    compile: str = "auto"
    revision: str | None = None
    token: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False

    @property
    def window_records(self) -> int:
        """Records per scoring window: ``window``, else ``batch_size * WINDOW_PER_BATCH``."""
        return max(1, self.window if self.window is not None else self.batch_size * WINDOW_PER_BATCH)


def reward_choice(reward: bool, reward_adapter: str | None) -> str | None:
    """``ScoreOptions.reward`` from ``--reward`` (a flag) and ``--reward-adapter NAME``."""
    if reward and reward_adapter is not None:
        raise UsageError("--reward and --reward-adapter both choose the reward adapter; give one")
    return reward_adapter if reward_adapter is not None else ("" if reward else None)


def check_device_map(value: str | None, device: str) -> str | None:
    """``--device-map`` as accelerate's strategy name; refused next to an explicit ``--device``."""
    if value is None:
        return None
    choice = value.strip().lower()
    if choice not in DEVICE_MAP_CHOICES:
        raise UsageError(
            f"invalid --device-map {value!r}", hint=f"use one of {', '.join(DEVICE_MAP_CHOICES)}"
        )
    if (device or "auto").strip().lower() != "auto":
        raise UsageError(
            f"--device {device} and --device-map {value} both place the model",
            hint="give only one: --device for one device, --device-map to spread it over several",
        )
    return choice
