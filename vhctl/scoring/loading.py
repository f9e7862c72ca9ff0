"""Loading a checkpoint to score: resolve it once, refuse what would score silently wrong, load.

Loading resolves the checkpoint and reads its manifest once (:func:`vhctl.modeling.loading.open_source`),
then refuses what would score silently wrong: a model with no value head (a random head), a head
file that is not the one the manifest vouches for, a reward adapter that is not there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vhctl.checkpoint.config import quiet_transformers
from vhctl.checkpoint.heads import check_head_file, find_head
from vhctl.constants import ADAPTERS_DIR
from vhctl.errors import NotAModelError, UsageError
from vhctl.formats import normalization_of
from vhctl.io.files import safe_relpath
from vhctl.modeling import load_checkpoint
from vhctl.modeling.loading import Source, open_source
from vhctl.modeling.reward import attach_reward_adapter
from vhctl.scoring.options import DEFAULT_REWARD, ScoreOptions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["LoadedModel", "load_for_scoring"]


@dataclass
class LoadedModel:
    """A loaded checkpoint ready to score.

    Attributes:
        model: The value-head wrapper in eval mode (with its reward adapter when one was asked for).
        tokenizer: The checkpoint's tokenizer.
        normalization: ``(mean, std)`` to normalise values with, or None.
        source: Where it came from (folder, manifest).
        reward: The reward adapter scored with, by name, or None.
    """

    model: Any
    tokenizer: PreTrainedTokenizerBase
    normalization: tuple[float, float] | None
    source: Source
    reward: str | None = None


def _normalization(source: Source, ckpt: str) -> tuple[float, float]:
    """The checkpoint's reward normalisation (mean, std), or a usage error before any loading."""
    found = normalization_of(source.manifest) if source.manifest is not None else None
    if found is None:
        raise UsageError(
            f"--normalize needs a reward normalisation, and {ckpt} has none",
            hint="import an OpenRLHF reward model whose config has mean/std with 'vhctl wrap'",
        )
    return found


def _reward_adapter_dir(source: Source, name: str) -> tuple[str, Path]:
    """The checkpoint's reward adapter called ``name`` ('' = the only one, or reward_adapter)."""
    folder = source.folder
    adapters: dict[str, str] = {}
    if source.manifest is not None:
        adapters = {n: info.path for n, info in source.manifest.adapters.items() if info.role == "reward"}
    elif (folder / ADAPTERS_DIR).is_dir():
        adapters = {
            p.name: f"{ADAPTERS_DIR}/{p.name}"
            for p in sorted((folder / ADAPTERS_DIR).iterdir())
            if p.is_dir()
        }
    if not adapters:
        raise UsageError(
            f"--reward: {folder} has no reward adapter",
            hint="add one with `vhctl attach-reward-adapter CKPT ADAPTER`",
        )
    if not name:
        name = next(iter(adapters)) if len(adapters) == 1 else DEFAULT_REWARD
    if name not in adapters:
        raise UsageError(
            f"--reward-adapter: no reward adapter named {name!r} in {folder} (it has: {', '.join(sorted(adapters))})",
            hint=f"use --reward-adapter {sorted(adapters)[0]}",
        )
    return name, folder / safe_relpath(adapters[name], what="adapter path")


def _check_value_head(source: Source, allow_pickle: bool) -> None:
    """Refuse what has no trained value head: scoring it would use a random head, differently each run."""
    if source.manifest is not None:
        check_head_file(source.folder, source.manifest)
        return
    found, looked = find_head(source.folder, allow_pickle=allow_pickle)
    if found is None:
        raise NotAModelError(
            f"{source.name} has no value head (looked in {', '.join(looked)}): scoring it would use a new, "
            "random head, and give different numbers on every run",
            hint=f"make a checkpoint first: 'vhctl wrap {source.name} --out DIR' (a head to train), or add "
            "'--init-from-reward RM' to start from a reward model's head",
        )


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """transformers draws a loading bar even into pipes and logs; keep it for terminals only."""
    from transformers.utils import logging as hf_logging

    if enabled or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def load_for_scoring(
    options: ScoreOptions, device: torch.device, dtype: torch.dtype, *, progress: bool = False
) -> LoadedModel:
    """The checkpoint's value-head model on ``device`` (or spread by ``device_map``), its tokenizer,
    its reward adapter when asked for, and its reward normalisation when asked for.

    Raises:
        UsageError: ``--normalize`` or ``--reward`` asked of a checkpoint without one; no tokenizer.
        NotAModelError: the model has no value head.
        IntegrityError: the head file is not the one the manifest vouches for.
    """
    from transformers import AutoTokenizer

    source = open_source(options.ckpt, revision=options.revision, token=options.token,
                         allow_pickle=options.allow_pickle)  # fmt: skip
    normalization = _normalization(source, options.ckpt) if options.normalize else None
    adapter = _reward_adapter_dir(source, options.reward) if options.reward is not None else None
    _check_value_head(source, options.allow_pickle)
    kwargs: dict[str, Any] = {"dtype": dtype, "allow_pickle": options.allow_pickle,
                              "trust_remote_code": options.trust_remote_code}  # fmt: skip
    if options.device_map is not None:
        kwargs["device_map"] = options.device_map  # accelerate places it; the head goes where it ends
    elif device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}
    with quiet_transformers(), _progress_bars(progress):
        model = load_checkpoint(source, **kwargs)
        if device.type != "cuda" and options.device_map is None:
            model.to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(source.folder), trust_remote_code=options.trust_remote_code
            )
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(
                f"{options.ckpt} has no tokenizer, and scoring needs one ({type(exc).__name__})",
                hint="save the tokenizer into the checkpoint folder (wrap copies the source's)",
            ) from exc
        if adapter is not None:
            model = attach_reward_adapter(model, *adapter)
    return LoadedModel(
        model.eval(), tokenizer, normalization, source, adapter[0] if adapter is not None else None
    )
