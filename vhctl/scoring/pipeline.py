"""What ``vhctl score`` and ``vhctl serve`` share: options, loading the model to score, the result post-processing.

Loading resolves the checkpoint and reads its manifest once (:func:`vhctl.modeling.loading.open_source`),
then refuses what would score silently wrong: a model with no value head (a random head), a head
file that is not the one the manifest vouches for, a reward adapter that is not there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vhctl.checkpoint.adapters import read_reward_adapter
from vhctl.checkpoint.config import quiet_transformers
from vhctl.checkpoint.heads import check_head_file, find_head
from vhctl.constants import ADAPTERS_DIR
from vhctl.errors import AdapterError, NotAModelError, UsageError
from vhctl.formats import normalization_of, normalize
from vhctl.io.files import safe_relpath
from vhctl.modeling import load_checkpoint
from vhctl.modeling.loading import Source, open_source
from vhctl.modeling.reward import reward_score_head
from vhctl.scoring.scorer import Scorer

__all__ = [
    "DEFAULT_REWARD",
    "DEVICE_MAP_CHOICES",
    "ScoreOptions",
    "ScoringModel",
    "check_device_map",
    "finite",
    "load_scoring_model",
    "finish_result",
    "make_scorer",
    "reward_choice",
]

DEFAULT_REWARD = "reward_adapter"
DEVICE_MAP_CHOICES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's strategies


@dataclass(frozen=True)
class ScoreOptions:
    """How to load and score a checkpoint (``vhctl score``'s options; ``serve`` uses the same).

    ``reward`` is None for no reward, ``""`` for the checkpoint's only (or default) reward adapter,
    else the adapter's name.
    """

    ckpt: str
    input: str = "-"
    reward: str | None = None
    per_token: bool = False
    batch_size: int = 16
    max_length: int | None = None
    max_batch_tokens: int | None = None
    device: str = "auto"
    device_map: str | None = None
    dtype: str = "auto"
    skip_bad: bool = False
    prefix_sharing: bool = True
    stream: bool = False
    normalize: bool = False
    revision: str | None = None
    token: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    compile: str = "auto"  # auto, on, off: vhctl.scoring.compiled (serve: server_choice, auto is on)


@dataclass
class ScoringModel:
    """A loaded checkpoint ready to score: the model (with its reward adapter), tokenizer, normalisation."""

    model: Any
    tokenizer: Any
    normalization: tuple[float, float] | None
    source: Source
    reward: str | None = None  # the reward adapter scored with, by name


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


def _with_reward_adapter(model: Any, name: str, adapter_dir: Path) -> Any:
    """The same model with the reward adapter loaded through PEFT next to (or as the first) adapter.

    A checkpoint's policy is usually a plain model: the adapter then becomes the PeftModel's only
    adapter, the scorer runs the policy with adapters disabled and the reward with it enabled.
    """
    from peft import PeftModel

    if not adapter_dir.is_dir():
        raise AdapterError(
            f"reward adapter {name!r} is listed but {adapter_dir} is missing", hint="run vhctl validate"
        )
    _, score_state = read_reward_adapter(str(adapter_dir))
    base = model.pretrained_model
    if isinstance(base, PeftModel):
        base.load_adapter(str(adapter_dir), name, is_trainable=False)
        peft_model = base
    else:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=name, is_trainable=False)
    device = model.v_head.summary.weight.device  # where the last hidden state lands (device maps too)
    head = reward_score_head(score_state, dtype=getattr(base, "dtype", torch.float32), device=device)
    rewarded = type(model)(peft_model, score_module=head, supports_rm_adapter=True, rm_adapter_name=name)
    rewarded.v_head = model.v_head
    return rewarded.eval()


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


def load_scoring_model(
    options: ScoreOptions, device: torch.device, dtype: torch.dtype, *, progress: bool = False
) -> ScoringModel:
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
            model = _with_reward_adapter(model, *adapter)
    return ScoringModel(model, tokenizer, normalization, source, adapter[0] if adapter is not None else None)


def make_scorer(loaded: ScoringModel, options: ScoreOptions, *, group: Any = None) -> Scorer:
    """The scorer of a loaded model, sharded over ``group``'s ranks when one is given."""
    return Scorer(
        loaded.model,
        loaded.tokenizer,
        batch_size=options.batch_size,
        max_length=options.max_length,
        max_batch_tokens=options.max_batch_tokens,
        per_token=options.per_token,
        reward=options.reward is not None,
        prefix_sharing=options.prefix_sharing,
        skip_bad=options.skip_bad,
        shard=group.shard if group is not None else None,
        gather=group.all_gather if group is not None else None,
        compile=options.compile,
    )


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
    (rewards of a PEFT adapter are left as they are); every non-finite number becomes null.
    """
    if normalization is not None:
        if result.get("value") is not None:
            result["value"] = normalize(result["value"], normalization)
        if result.get("values") is not None:
            result["values"] = [None if v is None else normalize(v, normalization) for v in result["values"]]
    for key in ("value", "reward", "values"):
        if key in result:
            result[key] = finite(result[key])
    return result
