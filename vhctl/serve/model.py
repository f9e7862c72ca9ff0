"""Loading the model a server scores with: the checkpoint, its tokenizer, its reward adapter.

This is the seam where ``vhctl.scoring.pipeline`` (shared by ``score`` and ``serve``) takes over at
integration: :func:`load_model` is the only entry point the server uses, and everything below it
is a copy of what ``vhctl score`` does today, kept small on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhctl.errors import AdapterError, UsageError

DEFAULT_REWARD = "reward_adapter"


@dataclass(frozen=True)
class ModelOptions:
    """What to load and where.

    Attributes:
        ckpt: A vhctl checkpoint folder, a hub id or ``vhctl:tiny``.
        reward: None for values only; ``""`` for the checkpoint's only (or default) reward adapter;
            else the adapter's name.
        normalize: Load the checkpoint's reward normalisation (mean, std); an error when it has none.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` or a dtype name.
    """

    ckpt: str
    reward: str | None = None
    normalize: bool = False
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    token: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    """A value-head model ready for :class:`vhctl.scoring.Scorer`.

    Attributes:
        model: The value-head wrapper, in eval mode, on ``device``.
        tokenizer: The checkpoint's tokenizer.
        normalization: ``(mean, std)`` to normalise values with, or None.
        device: Where the model runs (a ``torch.device``).
        dtype: Its ``torch.dtype``.
        reward: The selected reward adapter's name, or None.
    """

    model: Any
    tokenizer: Any
    normalization: tuple[float, float] | None
    device: Any
    dtype: Any
    reward: str | None


def load_model(options: ModelOptions) -> LoadedModel:
    """Load the checkpoint for serving; every problem is a :class:`vhctl.errors.VhctlError`.

    Raises:
        VhctlError: the checkpoint, its tokenizer, reward adapter or normalisation cannot be used.
    """
    # replaced by vhctl.scoring.pipeline at integration
    from vhctl.scoring import resolve_device, resolve_dtype

    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    folder = _resolve(options)
    adapter = _reward_adapter_dir(folder, options.reward) if options.reward is not None else None
    normalization = _normalization(options, folder) if options.normalize else None
    model, tokenizer = _load(options, folder, device, dtype)
    if adapter is not None:
        model = _with_reward_adapter(model, *adapter)
    return LoadedModel(model.eval(), tokenizer, normalization, device, dtype, adapter[0] if adapter else None)


def _resolve(options: ModelOptions) -> Path:
    from vhctl.checkpoint.load import resolve_source

    return resolve_source(options.ckpt, revision=options.revision, token=options.token,
                          allow_pickle=options.allow_pickle)


def _normalization(options: ModelOptions, folder: Path) -> tuple[float, float]:
    # replaced by vhctl.scoring.pipeline at integration (a copy of vhctl score's)
    from vhctl.checkpoint.manifest import Manifest
    from vhctl.formats import normalization_of

    found = normalization_of(Manifest.read(folder))
    if found is None:
        raise UsageError(
            f"--normalize needs a reward normalisation, and {options.ckpt} has none",
            hint="import an OpenRLHF reward model whose config has mean/std with 'vhctl wrap'",
        )
    return found


def _load(options: ModelOptions, folder: Path, device: Any, dtype: Any) -> tuple[Any, Any]:
    # replaced by vhctl.scoring.pipeline at integration (a copy of vhctl score's, without device maps)
    from transformers import AutoTokenizer

    from vhctl.checkpoint.config import quiet_transformers
    from vhctl.checkpoint.load import load_checkpoint

    kwargs: dict[str, Any] = {
        "dtype": dtype, "allow_pickle": options.allow_pickle, "trust_remote_code": options.trust_remote_code,
    }  # fmt: skip
    if options.revision is not None:
        kwargs["revision"] = options.revision
    if options.token is not None:
        kwargs["token"] = options.token
    if device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}
    with quiet_transformers(), _no_progress_bars():
        model = load_checkpoint(options.ckpt, **kwargs)
        if device.type != "cuda":
            model.to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=options.trust_remote_code)
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(
                f"{options.ckpt} has no tokenizer, and scoring needs one ({type(exc).__name__})",
                hint="save the tokenizer into the checkpoint folder (wrap copies the source's)",
            ) from exc
    return model, tokenizer


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """A server's stderr is a log: no loading bar in it."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _reward_adapter_dir(folder: Path, name: str) -> tuple[str, Path]:
    # replaced by vhctl.scoring.pipeline at integration (a copy of vhctl score's)
    from vhctl.checkpoint.manifest import Manifest
    from vhctl.constants import ADAPTERS_DIR, MANIFEST_NAME
    from vhctl.io.files import safe_relpath

    adapters: dict[str, str] = {}
    if (folder / MANIFEST_NAME).is_file():
        manifest = Manifest.read(folder)
        adapters = {n: info.path for n, info in manifest.adapters.items() if info.role == "reward"}
    elif (folder / ADAPTERS_DIR).is_dir():
        adapters = {p.name: f"{ADAPTERS_DIR}/{p.name}" for p in sorted((folder / ADAPTERS_DIR).iterdir())
                    if p.is_dir()}
    if not adapters:
        raise UsageError(f"--reward: {folder} has no reward adapter",
                         hint="add one with `vhctl attach-reward-adapter CKPT ADAPTER`")
    if not name:
        name = next(iter(adapters)) if len(adapters) == 1 else DEFAULT_REWARD
    if name not in adapters:
        raise UsageError(
            f"--reward: no reward adapter named {name!r} in {folder} (it has: {', '.join(sorted(adapters))})",
            hint=f"use --reward-adapter {sorted(adapters)[0]}",
        )
    return name, folder / safe_relpath(adapters[name], what="adapter path")


def _with_reward_adapter(model: Any, name: str, adapter_dir: Path) -> Any:
    # replaced by vhctl.scoring.pipeline at integration (a copy of vhctl score's)
    import torch
    from peft import PeftModel

    from vhctl.checkpoint.adapters import read_reward_adapter

    if not adapter_dir.is_dir():
        raise AdapterError(f"reward adapter {name!r} is listed but {adapter_dir} is missing",
                           hint="run vhctl validate")
    _, score_state = read_reward_adapter(str(adapter_dir))
    base = model.pretrained_model
    if isinstance(base, PeftModel):
        base.load_adapter(str(adapter_dir), name, is_trainable=False)
        peft_model = base
    else:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=name, is_trainable=False)
    weight = score_state["weight"]
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in score_state)
    head.load_state_dict({k: v.to(torch.float32) for k, v in score_state.items()})
    head = head.to(device=model.v_head.summary.weight.device, dtype=getattr(base, "dtype", torch.float32))
    rewarded = type(model)(peft_model, score_module=head.requires_grad_(False), supports_rm_adapter=True,
                           rm_adapter_name=name)
    rewarded.v_head = model.v_head
    return rewarded
