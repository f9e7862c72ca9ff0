"""inspect_checkpoint: what `vhctl info` shows, read from the manifest and safetensors headers only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import (
    HIDDEN,
    attach_adapter,
    make_adapter,
    make_reference,
    save_gpt2,
    write_head,
    write_manifest,
)
from safetensors.torch import load_file, save_file

from vhctl.checkpoint.inspect import (
    BaseModelRef,
    HeadInBase,
    HeadSummary,
    ListedReference,
    inspect_checkpoint,
)
from vhctl.constants import MANIFEST_NAME, SAFE_WEIGHTS_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT, VALUE_HEAD_NAME
from vhctl.errors import ManifestError, NotAModelError, SourceNotFoundError


def gpt2_parameters() -> int:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=HIDDEN, n_head=2, vocab_size=100)
    return sum(p.numel() for p in GPT2LMHeadModel(config).parameters())  # tied weights counted once


def test_policy(ckpt: Path) -> None:  # noqa: F811
    info = inspect_checkpoint(ckpt)
    json.dumps(info.to_dict())
    assert info.layout == "vhctl"
    assert (info.kind, info.architecture, info.model_type) == ("policy", "causal-lm", "gpt2")
    assert info.base_model == BaseModelRef("tiny-gpt2", None)
    assert info.parameters.base == gpt2_parameters()
    assert info.parameters.value_head == HIDDEN + 1
    assert info.dtypes == ["float32"]
    head = info.value_head
    assert isinstance(head, HeadSummary) and head.made is not None
    assert head.shape == [1, HIDDEN] and head.made.hidden_size == HIDDEN and head.made.dtype == "float32"
    paths = {f.path: f.size for f in info.files}
    assert {SAFE_WEIGHTS_NAME, VALUE_HEAD_NAME, MANIFEST_NAME, "config.json"} <= set(paths)
    assert paths[SAFE_WEIGHTS_NAME] == (ckpt / SAFE_WEIGHTS_NAME).stat().st_size
    assert info.total_size == sum(size or 0 for size in paths.values())
    assert info.unreadable == [] and info.reference is None and info.references == []
    assert info.vhctl_version


def test_reference_links(ckpt: Path) -> None:  # noqa: F811
    ref = make_reference(ckpt, shared_layers=1)
    policy = inspect_checkpoint(ckpt)
    assert policy.references == [ListedReference("ref", True)]
    assert policy.shared_layers == 1 and policy.frozen is not None and policy.frozen["num_shared_layers"] == 1
    assert "ref/model.safetensors" not in {f.path for f in policy.files}

    info = inspect_checkpoint(ref)
    assert info.kind == "reference" and info.reference is not None
    assert info.reference.policy == ".." and info.reference.policy_found
    assert info.reference.shared_tensors > 0 and info.shared_layers == 1
    assert info.parameters.base == policy.parameters.base
    assert info.parameters.base_stored is not None and info.parameters.base is not None
    assert info.parameters.base_stored < info.parameters.base


def test_adapters(ckpt: Path, tmp_path: Path) -> None:  # noqa: F811
    attach_adapter(ckpt, make_adapter(tmp_path / "adapter"))
    info = inspect_checkpoint(ckpt)
    adapter = info.adapters["reward_adapter"]
    assert (
        adapter.present and adapter.r == 4 and adapter.listed is not None and adapter.listed.role == "reward"
    )
    assert adapter.target_modules == ["c_attn"] and adapter.score_shape == [1, HIDDEN]
    assert (info.parameters.adapters["reward_adapter"] or 0) > 0


def test_bf16_dtypes(tmp_path: Path) -> None:
    folder = save_gpt2(tmp_path / "bf16", dtype=torch.bfloat16)
    write_head(folder)
    write_manifest(folder)
    assert inspect_checkpoint(folder).dtypes == ["bfloat16"]


def test_corrupt_header_does_not_raise(ckpt: Path) -> None:  # noqa: F811
    (ckpt / SAFE_WEIGHTS_NAME).write_bytes(b"\x00" * 4)
    info = inspect_checkpoint(ckpt)
    assert info.unreadable == [SAFE_WEIGHTS_NAME]
    assert info.parameters.base is None


def test_folders_that_are_not_vhctl_checkpoints(tmp_path: Path) -> None:
    plain = save_gpt2(tmp_path / "plain")
    info = inspect_checkpoint(plain)
    assert info.layout == "transformers" and info.kind is None
    assert info.architecture == "causal-lm" and info.parameters.base == gpt2_parameters()

    trl = tmp_path / "trl"
    shutil.copytree(plain, trl)
    tensors = load_file(str(trl / SAFE_WEIGHTS_NAME))
    tensors[V_HEAD_WEIGHT] = torch.zeros(1, HIDDEN)
    tensors[V_HEAD_BIAS] = torch.zeros(1)
    save_file(tensors, str(trl / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    info = inspect_checkpoint(trl)
    assert info.layout == "trl"
    assert info.value_head == HeadInBase([V_HEAD_BIAS, V_HEAD_WEIGHT])
    assert info.parameters.base == gpt2_parameters()


def test_errors(ckpt: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(SourceNotFoundError):
        inspect_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAModelError):
        inspect_checkpoint(tmp_path / "empty")
    with pytest.raises(NotAModelError):
        inspect_checkpoint(ckpt / "config.json")
    (ckpt / MANIFEST_NAME).write_text("{}")
    with pytest.raises(ManifestError):
        inspect_checkpoint(ckpt)
