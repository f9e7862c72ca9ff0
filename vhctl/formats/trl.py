"""TRL <= 1.12 value-head checkpoints: the LM's tensors and ``v_head.summary.*`` in the same weights.

Importing needs no code here: :func:`vhctl.checkpoint.heads.find_head` reads every TRL layout
(one file, shards, pickles, PEFT with the head next to the adapter). Export writes TRL's layout.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from vhctl.constants import ADAPTER_CONFIG_NAME, ADAPTER_SAFE_NAME, CONFIG_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT
from vhctl.errors import CheckpointError
from vhctl.formats import keymaps as km
from vhctl.formats.base import ExportJob, FormatSpec
from vhctl.formats.exporting import copy_adapters, copy_side_files
from vhctl.formats.weights import write_weights

__all__ = ["FORMAT", "PEFT_NOTE", "TRL_SHARDED_NOTE", "export", "export_peft"]

TRL_SHARDED_NOTE = (
    "TRL 1.12 reloads a sharded value-head checkpoint only from the hub (it looks the shards up there); "
    "push it, or export without --keep-shards to get one model.safetensors"
)
PEFT_NOTE = (
    "TRL saves a PEFT policy's head as pytorch_model.bin (a pickle); vhctl writes it as "
    "model.safetensors, which TRL 1.12 reads first"
)


def _trl_head(head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {V_HEAD_WEIGHT: head[V_HEAD_WEIGHT], V_HEAD_BIAS: head[V_HEAD_BIAS]}


def export(job: ExportJob) -> None:
    """TRL's ``save_pretrained`` layout: the LM's tensors and the head in one file (or the shards)."""
    weights = job.weights
    if job.keep_shards and weights.sharded:
        count = len(weights.groups)

        def groups() -> Iterator[dict[str, torch.Tensor]]:
            for i in range(count):
                tensors = weights.group_tensors(i)
                if i == count - 1:
                    tensors.update(_trl_head(job.head))
                yield tensors

        files = write_weights(job.dst, groups(), count)
        job.result.notes.append(TRL_SHARDED_NOTE)
    else:
        merged: dict[str, torch.Tensor] = {}
        for i in range(len(weights.groups)):
            merged.update(weights.group_tensors(i))
        merged.update(_trl_head(job.head))
        files = write_weights(job.dst, [merged], 1)
    shutil.copyfile(job.src / CONFIG_NAME, job.dst / CONFIG_NAME)
    files.append(CONFIG_NAME)
    files += copy_side_files(job.src, job.dst)
    files += copy_adapters(job.src, job.dst)
    job.result.files = sorted(files)


def export_peft(src: Path, dst: Path, head: dict[str, torch.Tensor]) -> list[str]:
    """A PEFT policy as TRL lays it out: the adapter, and the head alone next to it (as safetensors)."""
    files = []
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_SAFE_NAME):
        if not (src / name).is_file():
            raise CheckpointError(f"PEFT policy {src} lacks {name}", hint="run 'vhctl validate' on it")
        shutil.copyfile(src / name, dst / name)
        files.append(name)
    files += write_weights(dst, [_trl_head(head)], 1)
    files += copy_side_files(src, dst, generation=False)
    files += copy_adapters(src, dst)
    return sorted(files)


FORMAT = FormatSpec(
    name=km.TRL,
    title="a TRL",
    export=export,
    hint="AutoModelForCausalLMWithValueHead.from_pretrained('{out}')  (trl.experimental.ppo)",
)
