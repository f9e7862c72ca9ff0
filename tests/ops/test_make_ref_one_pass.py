"""make-ref reads each policy byte once: the stored tensors hashed as written, the shared ones hashed
once (on a guess started before transformers' modeling code is imported, checked against the split)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers.tiny_models import ARCHS, SMALL_SHARD, make_tiny_model, save_tiny_model

import vhctl.checkpoint.manifest as manifest_module
import vhctl.ops.make_ref as make_ref_module
from vhctl.checkpoint.tensors import shared_tensors_sha256
from vhctl.checkpoint.validate import validate_checkpoint
from vhctl.constants import MANIFEST_NAME, SAFE_WEIGHTS_NAME
from vhctl.modeling.reference import split_shared
from vhctl.ops.make_ref import make_reference
from vhctl.ops.wrap import wrap_model


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("one-pass-ref")
    src = save_tiny_model("gpt2", root / "base", max_shard_size=SMALL_SHARD)
    wrap_model(str(src), root / "policy", seed=0)
    return root / "policy"


@pytest.fixture
def policy(template: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(template, tmp_path / "policy")
    return tmp_path / "policy"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Files read again for the manifest, and the name lists the shared digest was started on."""
    calls: dict[str, list] = {"manifest": [], "shared": []}
    real_sha, real_shared = manifest_module.sha256_file, make_ref_module._shared_digest
    monkeypatch.setattr(
        manifest_module, "sha256_file", lambda p: (calls["manifest"].append(Path(p).name), real_sha(p))[1]
    )

    def shared(index: dict, names: list[str], cancel: object) -> str:
        calls["shared"].append(list(names))
        return real_shared(index, names, cancel)

    monkeypatch.setattr(make_ref_module, "_shared_digest", shared)
    return calls


def _files(folder: Path) -> dict[str, dict]:
    return json.loads((folder / MANIFEST_NAME).read_text())["files"]


def test_stored_tensors_are_hashed_as_written(policy: Path, counted: dict[str, list]) -> None:
    result = make_reference(policy, num_shared_layers=1)
    ref = result.out
    reference = json.loads((ref / MANIFEST_NAME).read_text())["reference"]
    assert (
        _files(ref)[SAFE_WEIGHTS_NAME]["sha256"]
        == hashlib.sha256((ref / SAFE_WEIGHTS_NAME).read_bytes()).hexdigest()
    )
    assert SAFE_WEIGHTS_NAME not in counted["manifest"]  # not read again
    assert reference["shared_sha256"] == shared_tensors_sha256(policy, reference["shared_tensors"])
    assert counted["shared"] == [reference["shared_tensors"]]  # the guess was right: hashed once
    assert validate_checkpoint(ref, deep=True) == [] and validate_checkpoint(policy) == []


def test_a_wrong_guess_is_hashed_again(policy: Path, counted: dict[str, list],
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(make_ref_module, "_guess_shared", lambda names, n, pattern: sorted(names)[:3])
    result = make_reference(policy, num_shared_layers=1)
    reference = json.loads((result.out / MANIFEST_NAME).read_text())["reference"]
    assert reference["shared_sha256"] == shared_tensors_sha256(policy, reference["shared_tensors"])
    assert len(counted["shared"]) == 2 and counted["shared"][-1] == reference["shared_tensors"]
    assert validate_checkpoint(result.out) == []


def test_a_full_copy_is_hashed_as_copied(policy: Path, counted: dict[str, list]) -> None:
    result = make_reference(policy)
    files = _files(result.out)
    shards = [name for name in files if name.endswith(".safetensors") and name.startswith("model")]
    assert len(shards) > 1 and not set(shards) & set(counted["manifest"])
    for shard in shards:
        assert files[shard]["sha256"] == hashlib.sha256((result.out / shard).read_bytes()).hexdigest()
    assert counted["shared"] == [] and validate_checkpoint(result.out) == []


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "bart"])  # BART: the encoder comes first
@pytest.mark.parametrize("layers", [0, 1])
def test_the_guess_is_the_split_for_known_families(arch: str, layers: int) -> None:
    model = make_tiny_model(arch)
    stored = set(model.state_dict())
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    split, _ = split_shared(names, layers)
    assert make_ref_module._guess_shared(sorted(stored), layers, None) == sorted(set(split) & stored)


def test_the_policy_s_errors_come_before_the_output_s(policy: Path) -> None:
    """The reference folder is opened before the split is known (to start writing): a bad --shared
    is still what is reported, and an existing reference is left as it was."""
    from vhctl.errors import DestinationExistsError, LayerPatternError

    first = make_reference(policy, num_shared_layers=1).out
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    with pytest.raises(LayerPatternError):
        make_reference(policy, num_shared_layers=7)
    with pytest.raises(DestinationExistsError):
        make_reference(policy, num_shared_layers=0)
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert not [p for p in policy.iterdir() if p.name.startswith(".vhctl-")]
