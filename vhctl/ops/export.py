"""``vhctl export``: a vhctl checkpoint in the layout TRL, OpenRLHF or transformers reads.

The operation: check the options and the checkpoint, then hand the weights to the format's
exporter (:mod:`vhctl.formats`, one module per format, their key maps in
:mod:`vhctl.formats.keymaps`) inside an atomic output folder. Exports are exact: tensors are copied
bit for bit under the format's names, and a head bias the format cannot hold is kept as ``--bias``
says. Nothing written is a pickle; the output folder appears only once complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open

from vhctl.checkpoint.config import hidden_size_of, load_config
from vhctl.checkpoint.heads import check_head_state, read_safetensors_keys
from vhctl.checkpoint.manifest import Manifest
from vhctl.checkpoint.tensors import shared_tensors_sha256, tensor_index
from vhctl.constants import (
    ADAPTER_CONFIG_NAME,
    CONFIG_NAME,
    KIND_REFERENCE,
    MANIFEST_NAME,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.errors import CheckpointError, IntegrityError, UnsupportedModelError, UsageError
from vhctl.formats import keymaps as km
from vhctl.formats.base import ExportJob, ExportResult
from vhctl.formats.padding import PAD_AUTO, PAD_MODES
from vhctl.formats.registry import format_spec
from vhctl.formats.trl import PEFT_NOTE, export_peft
from vhctl.formats.weights import read_weight_set
from vhctl.io.files import atomic_output_dir
from vhctl.io.hub import HubToken
from vhctl.io.resolve import resolve_model

__all__ = ["export_checkpoint"]


def _check_options(
    fmt: str, bias: str, value_head_prefix: str | None, keep_shards: bool, pad_token: str
) -> None:
    format_spec(fmt, exporting=True)
    if pad_token not in PAD_MODES:
        raise UsageError(f"unknown --pad-token {pad_token!r}", hint=f"use one of: {', '.join(PAD_MODES)}")
    if pad_token != PAD_AUTO and fmt != km.SEQCLS:
        raise UsageError("--pad-token applies to --format seqcls (the other formats read the attention mask)")
    if bias not in km.BIAS_MODES:
        raise UsageError(f"unknown --bias {bias!r}", hint=f"use one of: {', '.join(km.BIAS_MODES)}")
    if fmt == km.TRL and bias != km.BIAS_AUTO:
        raise UsageError("--bias does not apply to --format trl: TRL's value head has a bias of its own")
    if bias == km.BIAS_MEAN and fmt != km.OPENRLHF:
        raise UsageError("--bias mean needs --format openrlhf (only OpenRLHF normalises rewards with a mean)")
    if value_head_prefix is not None:
        if fmt != km.OPENRLHF:
            raise UsageError("--value-head-prefix applies to --format openrlhf only")
        if not value_head_prefix.isidentifier():
            raise UsageError(
                f"--value-head-prefix {value_head_prefix!r} must be a Python identifier (e.g. score)"
            )
    if keep_shards and fmt != km.TRL:
        raise UsageError("--keep-shards applies to --format trl (other formats always keep the shards)")


def _check_sizes(folder: Path, manifest: Manifest) -> None:
    """Refuse a checkpoint whose files no longer match their manifest sizes (a cheap integrity check;
    ``vhctl validate`` checks hashes)."""
    for rel, entry in manifest.files.items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != entry.size:
            raise IntegrityError(
                f"{path} {'is missing' if not path.is_file() else 'changed size'} since the checkpoint was written",
                hint=f"run 'vhctl validate {folder}'",
            )


def _shared_from_policy(folder: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    """A reference's shared tensors, from its policy, after the hash check loading does too."""
    ref = manifest.reference
    assert ref is not None
    policy = (folder / str(ref.policy)).resolve()
    if not (policy / MANIFEST_NAME).is_file():
        raise CheckpointError(f"the policy of reference {folder} is not at {policy}")
    if shared_tensors_sha256(policy, ref.shared_tensors) != ref.shared_sha256:
        raise IntegrityError(
            f"the policy's shared tensors changed since reference {folder} was made",
            hint="make the reference again with 'vhctl make-ref'",
        )
    index = tensor_index(policy)
    out = {}
    for name in ref.shared_tensors:
        path, _ = index[name]
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            out[name] = handle.get_tensor(name)
    return out


def _is_peft_policy(folder: Path, manifest: Manifest) -> bool:
    return (isinstance(manifest.extra, dict) and "peft_policy" in manifest.extra) or (
        (folder / ADAPTER_CONFIG_NAME).is_file() and not (folder / CONFIG_NAME).is_file()
    )


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    keep_shards: bool = False,
    bias: str = km.BIAS_AUTO,
    value_head_prefix: str | None = None,
    pad_token: str = PAD_AUTO,
    revision: str | None = None,
    token: HubToken = None,
) -> ExportResult:
    """Export the vhctl checkpoint ``checkpoint`` to ``out`` in format ``fmt``.

    Args:
        checkpoint: a vhctl checkpoint (folder or hub id).
        fmt: ``trl``, ``openrlhf`` or ``seqcls`` (see :data:`vhctl.formats.keymaps.KEYMAPS`).
        out: the folder to create; replaced only with ``force``, and only once complete.
        force: replace an existing ``out`` (once the new folder is complete).
        keep_shards: TRL only: keep the checkpoint's shards (TRL 1.12 cannot reload those from a
            local folder). OpenRLHF and seqcls exports always keep the checkpoint's shards.
        bias: for OpenRLHF and seqcls, whose heads have no bias: ``auto`` (zero bias: nothing to do;
            else fold it into the final norm's bias where the family has one; else refuse), ``norm``,
            ``mean`` (OpenRLHF: exact normalised rewards) or ``config`` (recorded only).
        value_head_prefix: OpenRLHF head name (default ``score``; ``value_head`` for old OpenRLHF).
        pad_token: seqcls only: ``auto`` gives a model whose pad token is its EOS token a pad token of
            its own (a special token of the tokenizer, or a new one on a spare embedding row) and
            refuses when there is none; ``eos`` keeps EOS (a text ending in EOS is then scored by
            transformers at the token before its trailing EOS tokens).
        revision: the hub revision to pin when ``checkpoint`` is a hub id.
        token: a hub token for a private hub id (never printed or stored).

    Returns:
        What was written (files, how the head bias was kept, notes for the user).

    Raises:
        UsageError: unknown format or option, or an option that does not apply to the format.
        ManifestError: ``checkpoint`` is not a vhctl checkpoint.
        UnsupportedModelError: the format cannot hold this model (seq2seq in OpenRLHF...) or its bias;
            seqcls: the pad token is EOS and no other token can pad (``pad_token="auto"``).
        DestinationExistsError: ``out`` exists and ``force`` is False.
    """
    _check_options(fmt, bias, value_head_prefix, keep_shards, pad_token)
    spec = format_spec(fmt, exporting=True)
    folder = resolve_model(checkpoint, revision=revision, token=token).path
    manifest = Manifest.read(folder)
    out_path = Path(out).absolute()
    if out_path == folder.absolute() or folder.absolute() in out_path.parents:
        raise UsageError(
            f"--out {out_path} is inside the checkpoint {folder}", hint="choose a folder elsewhere"
        )
    keymap = km.KEYMAPS[fmt]
    if manifest.architecture not in keymap.architectures:
        raise UnsupportedModelError(
            f"{checkpoint} is a {manifest.architecture} checkpoint; the {fmt} format holds "
            f"{' and '.join(keymap.architectures)} models only",
            hint="export seq2seq checkpoints with --format trl",
        )
    head_path = folder / VALUE_HEAD_NAME
    if not head_path.is_file():
        raise CheckpointError(f"{folder} has no {VALUE_HEAD_NAME}", hint="run 'vhctl validate' on it")
    _check_sizes(folder, manifest)
    head = read_safetensors_keys(head_path)
    result = ExportResult(
        out_path, fmt, str(checkpoint), manifest.architecture, manifest.model_type, "native"
    )

    if _is_peft_policy(folder, manifest):
        if fmt != km.TRL:
            raise UnsupportedModelError(
                f"{checkpoint} is a PEFT policy (an adapter on {manifest.base_model.get('source')}); "
                f"the {fmt} format needs the full model",
                hint="merge the adapter (peft merge_and_unload), save, wrap that, then export",
            )
        check_head_state(head, int(head[V_HEAD_WEIGHT].shape[-1]), where=str(head_path))
        with atomic_output_dir(out_path, force=force) as tmp:
            result.files = export_peft(folder, tmp, head)
        result.notes.append(PEFT_NOTE)
        return result

    config = load_config(folder, where=str(checkpoint))
    hidden = hidden_size_of(config)
    check_head_state(head, hidden, where=str(head_path))
    weights = read_weight_set(folder)
    if manifest.kind == KIND_REFERENCE and manifest.reference and manifest.reference.shared_tensors:
        weights.add(_shared_from_policy(folder, manifest))
        keep_shards = False
    with atomic_output_dir(out_path, force=force) as tmp:
        job = ExportJob(
            folder, tmp, weights, head, config, manifest, hidden, bias, value_head_prefix, keep_shards, result,
            pad_token,
        )  # fmt: skip
        assert spec.export is not None
        spec.export(job)
    return result
