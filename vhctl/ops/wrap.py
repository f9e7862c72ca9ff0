"""``wrap``: turn a base model (or a TRL-style or foreign checkpoint) into a vhctl checkpoint.

Works at the file level: base weights are copied (or hard-linked) byte for byte and hashed from the
bytes written; they are deserialised only when they must change (see :mod:`vhctl.ops.base_files`).
OpenRLHF, sequence-classification and DeepSpeed-Chat folders are converted by :mod:`vhctl.formats`.

The copy starts first: this module imports neither torch nor transformers at import time, so the
weights are being copied and hashed on worker threads while those are imported and the config is
read (the output folder is opened early for that; a refusal to write it is still reported after
the source has been checked, as before).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhctl.checkpoint.config import detect_architecture, dropout_of, hidden_size_of, load_config
from vhctl.checkpoint.layout import is_peft_policy_source
from vhctl.checkpoint.manifest import Manifest, ValueHeadInfo, finish_manifest
from vhctl.checkpoint.tensors import has_pickle_weights, has_safetensors_weights, weight_files
from vhctl.checkpoint.tokenizer import copy_tokenizer_files
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    ARCH_CAUSAL,
    ARCH_SEQ2SEQ,
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    KIND_POLICY,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.dtypes import canonical_dtype, dtype_name, torch_dtype
from vhctl.errors import NotAModelError, UnsafeLoadError, UnsupportedModelError, UsageError
from vhctl.io.hub import HubToken
from vhctl.io.resolve import ResolvedModel, resolve_model
from vhctl.io.transfer import FileTransfers
from vhctl.ops.base_files import (
    KnownDigests,
    convert_pickle_base,
    copy_safetensors_base,
    open_output_early,
    start_verbatim_copies,
)

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from vhctl.checkpoint.heads import FoundHead
    from vhctl.formats import ForeignLayout, ImportResult, RewardHead

__all__ = ["INITS", "WrapResult", "init_head", "wrap_model"]

INITS = ("random", "normal")


@dataclass
class WrapResult:
    """What ``wrap`` wrote; ``head_from`` names where a kept head came from (None: a new head)."""

    out: Path
    source: str
    architecture: str
    model_type: str
    hidden_size: int
    head_init: str
    head_from: str | None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data.pop("notes")
        return data


def init_head(
    hidden_size: int, *, init: str, std: float, seed: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A new head's tensors; the same seed gives the same bytes.

    ``random`` is PyTorch's default ``Linear`` init (uniform in +-1/sqrt(hidden) for weight and bias);
    ``normal`` draws the weight from N(0, std) and zeroes the bias (TRL's ``"normal"`` strategy).
    """
    import torch

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    if init == "normal":
        weight = torch.empty(1, hidden_size).normal_(0.0, std, generator=generator)
        bias = torch.zeros(1)
    else:
        bound = 1.0 / math.sqrt(hidden_size)
        weight = torch.empty(1, hidden_size).uniform_(-bound, bound, generator=generator)
        bias = torch.empty(1).uniform_(-bound, bound, generator=generator)
    return weight, bias


def check_head_options(
    init: str | None, std: float | None, dropout: float | None, *, seed: int | None = None,
    init_from_reward: object = None, link: bool = False, dtype: str | None = None,
) -> None:  # fmt: skip
    """Refuse values out of range and options that would silently do nothing with the others given."""
    if init is not None and init not in INITS:
        raise UsageError(f"unknown --init {init!r}", hint=f"use one of: {', '.join(INITS)}")
    if std is not None and (not math.isfinite(std) or std <= 0):
        raise UsageError(f"--std must be a positive number, got {std}")
    if dropout is not None and (not math.isfinite(dropout) or not 0.0 <= dropout < 1.0):
        raise UsageError(f"--dropout must be in [0, 1), got {dropout}")
    if init_from_reward is not None:
        given = [
            name for name, value in (("--init", init), ("--std", std), ("--seed", seed)) if value is not None
        ]
        if given:
            raise UsageError(
                f"{' and '.join(given)} and --init-from-reward both set the head: the reward model's head is "
                f"used, so {'they do' if len(given) > 1 else 'it does'} nothing",
                hint=f"drop {' and '.join(given)}, or --init-from-reward",
            )
    if std is not None and init != "normal":
        raise UsageError(
            "--std only applies to --init normal (the default init, random, has no std)",
            hint="add --init normal, or drop --std",
        )
    if link and dtype is not None:
        raise UsageError(
            "--link and --dtype do not go together: --dtype rewrites every weight file, so nothing would be linked",
            hint="drop one of them",
        )


def _remote_code_files(src: Path, config: PretrainedConfig) -> list[str]:
    """The local ``*.py`` modules a config's ``auto_map`` names (``module.Class``), which a trusted
    remote-code checkpoint needs next to its config."""
    auto_map = getattr(config, "auto_map", None) or {}
    names: set[str] = set()
    for value in auto_map.values():
        for ref in value if isinstance(value, list | tuple) else [value]:
            if isinstance(ref, str) and "--" not in ref and "." in ref:
                module = ref.rsplit(".", 1)[0]
                if "/" not in module and (src / f"{module}.py").is_file():
                    names.add(f"{module}.py")
    return sorted(names)


def _detect(config: PretrainedConfig, *, where: str, trust_remote_code: bool) -> str:
    """Causal or seq2seq; a trusted remote-code model says which through its ``auto_map``."""
    try:
        return detect_architecture(config, where=where)
    except UnsupportedModelError:
        auto_map = getattr(config, "auto_map", None) or {}
        if trust_remote_code and "AutoModelForSeq2SeqLM" in auto_map:
            return ARCH_SEQ2SEQ
        if trust_remote_code and "AutoModelForCausalLM" in auto_map:
            return ARCH_CAUSAL
        raise


@dataclass
class _Plan:
    """What the source is and where its head comes from, decided before anything is written."""

    source: str
    resolved: ResolvedModel
    config: PretrainedConfig
    architecture: str
    hidden: int
    dropout: float
    foreign: ForeignLayout | None
    found: FoundHead | None
    reward: RewardHead | None


def _resolve(source: str | os.PathLike[str], out_path: Path, *, revision: str | None, token: HubToken,
             allow_pickle: bool) -> ResolvedModel:  # fmt: skip
    resolved = resolve_model(source, revision=revision, token=token, allow_pickle=allow_pickle)
    src = resolved.path
    if out_path == src.absolute() or src.absolute() in out_path.parents:
        raise UsageError(
            f"--out {out_path} is inside the source model folder", hint="choose a folder elsewhere"
        )
    if (
        (src / ADAPTER_CONFIG_NAME).is_file()
        and not (src / CONFIG_NAME).is_file()
        and not is_peft_policy_source(src)
    ):
        raise NotAModelError(
            f"{source} is a PEFT adapter, not a model",
            hint="wrap its base model, then add a reward adapter with 'vhctl attach-reward-adapter'",
        )
    return resolved


def _plan(source: str, resolved: ResolvedModel, *, dropout: float | None, trust_remote_code: bool,
          allow_pickle: bool, init_from_reward: str | os.PathLike[str] | None, token: HubToken) -> _Plan:  # fmt: skip
    """Read the source's config and find its head (or the reward model's) without writing anything."""
    from vhctl.checkpoint.heads import check_head_state, find_head
    from vhctl.formats import detect_foreign_layout, read_reward_head

    src = resolved.path
    config = load_config(src, where=source, trust_remote_code=trust_remote_code)
    architecture = _detect(config, where=source, trust_remote_code=trust_remote_code)
    hidden = hidden_size_of(config)
    if not has_safetensors_weights(src) and not has_pickle_weights(src):
        raise NotAModelError(f"{source} holds a config but no weights", hint="point at a saved model folder")
    foreign = detect_foreign_layout(src, allow_pickle=allow_pickle)
    found = None if foreign is not None else find_head(src, allow_pickle=allow_pickle)[0]
    reward = (
        None
        if init_from_reward is None
        else read_reward_head(init_from_reward, hidden_size=hidden, allow_pickle=allow_pickle, token=token)
    )
    if found is not None:
        check_head_state(found.state, hidden, where=f"{source}/{found.files[0]}")
    effective = dropout_of(config, {"summary_dropout_prob": 0.1 if dropout is None else dropout})
    return _Plan(source, resolved, config, architecture, hidden, effective, foreign, found, reward)


def _write_base(plan: _Plan, tmp: Path, *, target: torch.dtype | None, dtype: str | None, link: bool,
                allow_pickle: bool, trust_remote_code: bool, transfers: FileTransfers,
                started: dict[str, Path], verify: bool) -> tuple[ImportResult | None, KnownDigests]:  # fmt: skip
    """The base model's files in ``tmp``; returns the import result (foreign formats) and known digests."""
    src = plan.resolved.path
    imported, known = None, KnownDigests()
    if plan.foreign is not None:
        from vhctl.formats import import_foreign

        transfers.discard_all()  # converted, not copied
        imported = import_foreign(plan.foreign, tmp, config=plan.config, dtype=target)
    elif has_safetensors_weights(src):
        head_files = plan.found.base_files if plan.found else []
        known = copy_safetensors_base(
            src, tmp, head_files=head_files, dtype=target, link=link, transfers=transfers, started=started,
            verify=verify,
        )  # fmt: skip
        config_data = json.loads((src / CONFIG_NAME).read_text(encoding="utf-8"))
        if target is not None:
            config_data["dtype"] = dtype
            config_data.pop("torch_dtype", None)
        (tmp / CONFIG_NAME).write_text(
            json.dumps(config_data, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if (src / GENERATION_CONFIG_NAME).is_file():
            shutil.copyfile(src / GENERATION_CONFIG_NAME, tmp / GENERATION_CONFIG_NAME)
    else:
        if not allow_pickle:
            raise UnsafeLoadError(
                f"{plan.source} holds only pickle weights",
                hint="pass --allow-pickle to convert them (read with weights_only=True)",
            )
        convert_pickle_base(src, tmp, plan.architecture, target)
    copy_tokenizer_files(src, tmp)
    if trust_remote_code:
        for name in _remote_code_files(src, plan.config):
            shutil.copyfile(src / name, tmp / name)
    return imported, known


def _head(plan: _Plan, imported: ImportResult | None, *, init: str | None, std: float | None,
          seed: int | None) -> tuple[torch.Tensor, torch.Tensor, ValueHeadInfo]:  # fmt: skip
    """The head to write: the reward model's, the imported one, the source's, or a new one."""
    head_std: float | None
    if plan.reward is not None or imported is not None:
        head = plan.reward if plan.reward is not None else imported
        assert head is not None
        weight, bias, head_init, head_std, head_seed = head.weight, head.bias, "loaded", None, None
    elif plan.found is not None:
        weight, bias = plan.found.state[V_HEAD_WEIGHT], plan.found.state[V_HEAD_BIAS]
        head_init, head_std, head_seed = "loaded", None, None
    else:
        head_std = 0.2 if std is None else float(std)
        head_init, head_seed = init or "random", seed
        weight, bias = init_head(plan.hidden, init=head_init, std=head_std, seed=seed)
        if head_init != "normal":
            head_std = None
    info = ValueHeadInfo(
        file=VALUE_HEAD_NAME, hidden_size=plan.hidden, dtype=dtype_name(weight.dtype), init=head_init,
        std=head_std, dropout=plan.dropout, seed=head_seed,
    )  # fmt: skip
    return weight, bias, info


def _manifest(
    plan: _Plan, head_info: ValueHeadInfo, imported: ImportResult | None, revision: str | None
) -> Manifest:
    resolved = plan.resolved
    source = str(Path(plan.source).absolute()) if resolved.origin == "local" else resolved.source
    extra = {**(imported.extra if imported else {}), **(plan.reward.manifest_extra() if plan.reward else {})}
    return Manifest(
        kind=KIND_POLICY, architecture=plan.architecture, model_type=str(plan.config.model_type),
        value_head=head_info, base_model={"source": source, "revision": resolved.commit or revision}, extra=extra,
    )  # fmt: skip


def _write_head(tmp: Path, weight: torch.Tensor, bias: torch.Tensor) -> None:
    from vhctl.checkpoint.heads import write_head

    write_head(tmp, weight, bias)


def wrap_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    init: str | None = None,
    std: float | None = None,
    dropout: float | None = None,
    seed: int | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    link: bool = False,
    token: HubToken = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    init_from_reward: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> WrapResult:
    """Write a vhctl checkpoint for ``source`` into ``out`` (atomically).

    Args:
        source: hub id, local folder, TRL-style checkpoint or ``"vhctl:tiny"``.
        out: the checkpoint folder to create; replaced only with ``force``.
        init: ``random`` (PyTorch default; None means random) or ``normal`` (N(0, std), zero bias) for
            a new head; a head found in ``source`` is kept instead.
        std: standard deviation for ``normal`` (default 0.2, TRL's ``v_head_initializer_range``).
        dropout: the head's dropout (default 0.1; a config's ``summary_dropout_prob`` wins, as in TRL).
        seed: makes the head file byte-identical across runs.
        dtype: convert the base's floating-point weights (``float32``, ``bfloat16``, ``float16`` or their
            short names, see :mod:`vhctl.dtypes`).
        link: hard-link unchanged base files instead of copying them (same filesystem only).
        allow_pickle: read pickle weights (``pytorch_model.bin``) with ``weights_only=True``.
        trust_remote_code: run the model folder's own code (``auto_map`` in its config); off by
            default, and then such a config is refused rather than executed.
        init_from_reward: take the head from this reward model's score head (see
            :func:`vhctl.formats.read_reward_head`) instead of the source's or a new one.
        verify: hash weight files from the Hugging Face cache too, whose blob names are otherwise
            taken as their sha256 (and recorded as such in the manifest), and refuse a blob whose
            bytes do not match its name, writing nothing.

    Returns:
        What was written (a :class:`WrapResult`).

    Raises:
        IntegrityError: with ``verify``, a cache blob whose bytes do not hash to its name.
    """
    check_head_options(
        init, std, dropout, seed=seed, init_from_reward=init_from_reward, link=link, dtype=dtype
    )
    dtype = canonical_dtype(dtype) if dtype is not None else None
    target = torch_dtype(dtype) if dtype is not None else None
    out_path = Path(out).absolute()
    resolved = _resolve(source, out_path, revision=revision, token=token, allow_pickle=allow_pickle)
    if is_peft_policy_source(resolved.path):  # TRL's PEFT layout: adapter + head, no base weights
        from vhctl.ops.peft_policy import wrap_peft_policy  # imports torch: only when it is needed

        done = wrap_peft_policy(
            str(source),
            resolved,
            out_path,
            dropout=dropout,
            dtype=dtype,
            link=link,
            force=force,
            token=token,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            init_from_reward=init_from_reward,
            head_options_given=(init, std, seed) != (None,) * 3,
        )
        return WrapResult(out=out_path, source=str(source), **asdict(done))
    src = resolved.path
    verbatim = weight_files(src) if target is None and has_safetensors_weights(src) else []
    with contextlib.ExitStack() as stack:
        tmp, refused = open_output_early(stack, out_path, force=force)
        transfers = stack.enter_context(FileTransfers())
        started: dict[str, Path] = {}
        if tmp is not None:  # copy and hash the weights while transformers is imported and the config read
            started = start_verbatim_copies(src, tmp, verbatim, transfers, link=link, verify=verify)
        plan = _plan(str(source), resolved, dropout=dropout, trust_remote_code=trust_remote_code,
                     allow_pickle=allow_pickle, init_from_reward=init_from_reward, token=token)  # fmt: skip
        if refused is not None:
            raise refused
        assert tmp is not None
        imported, known = _write_base(plan, tmp, target=target, dtype=dtype, link=link, allow_pickle=allow_pickle,
                                      trust_remote_code=trust_remote_code, transfers=transfers, started=started,
                                      verify=verify)  # fmt: skip
        weight, bias, head_info = _head(plan, imported, init=init, std=std, seed=seed)
        _write_head(tmp, weight, bias)
        manifest = _manifest(plan, head_info, imported, revision)
        manifest = finish_manifest(tmp, manifest, known.sha256, known.from_blob)
    notes = list(imported.notes) if imported else []
    if head_info.init == "loaded" and plan.reward is None and (init, std, seed) != (None, None, None):
        notes.append("--init/--std/--seed did nothing: the source's own value head was kept")
    head_from = (
        f"reward:{plan.reward.format}" if plan.reward else plan.foreign.format if plan.foreign
        else plan.found.layout if plan.found else None
    )  # fmt: skip
    return WrapResult(
        out=out_path, source=str(source), architecture=plan.architecture, model_type=str(plan.config.model_type),
        hidden_size=plan.hidden, head_init=head_info.init, head_from=head_from, files=sorted(manifest.files),
        notes=notes,
    )  # fmt: skip
