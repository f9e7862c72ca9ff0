"""Every kind of corruption is caught by ``vhctl validate --deep``, each with its problem code.

The checkpoint is the full thing vhctl writes: a sharded base (wrap), a reference sharing one layer
(make-ref) and a reward adapter (attach-reward-adapter). Each case plants one corruption in a fresh
copy and runs the real command (``validate --deep --json``). After a deliberate *content* change
the manifest is re-hashed, so that the check under test is the one that must see it; the cases
about bytes changing behind the manifest's back (flipped byte, truncation) do not re-hash.

tests/checkpoint/test_validate.py covers the same codes on hand-built single-file checkpoints.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import SMALL_SHARD, make_reward_adapter, save_tiny_model
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from vhctl.checkpoint.manifest import Manifest
from vhctl.checkpoint.tensors import read_header, read_index
from vhctl.cli.app import app
from vhctl.constants import (
    MANIFEST_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.ops.attach import attach_adapter
from vhctl.ops.make_ref import make_reference
from vhctl.ops.wrap import wrap_model

ADAPTER = "adapters/reward_adapter/adapter_model.safetensors"
ADAPTER_CONFIG = "adapters/reward_adapter/adapter_config.json"
REF = "ref"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corruption")
    base = save_tiny_model("gpt2", root / "base", max_shard_size=SMALL_SHARD)
    adapter = make_reward_adapter("gpt2", root / "rm", base)
    ckpt = root / "ck"
    wrap_model(str(base), ckpt, seed=0)
    make_reference(ckpt, num_shared_layers=1)
    attach_adapter(ckpt, str(adapter))
    # A reward adapter made for another base (llama, another hidden size and other modules).
    other = save_tiny_model("llama", root / "llama")
    make_reward_adapter("llama", root / "rm-llama", other)
    return ckpt


@pytest.fixture
def ckpt(tmp_path: Path, template: Path) -> Path:
    dst = tmp_path / "ck"
    shutil.copytree(template, dst)
    return dst


def validate(folder: Path) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(app, ["validate", str(folder), "--deep", "--json"])
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)["problems"]


def shards(ckpt: Path) -> list[str]:
    return sorted(set(read_index(ckpt).values()))


def shard_of(ckpt: Path, tensor: str) -> str:
    return read_index(ckpt)[tensor]


def refresh(folder: Path) -> None:
    manifest = Manifest.read(folder)
    manifest.refresh_files(folder)
    manifest.write(folder)


def flip_byte(path: Path, tensor: str | None = None) -> None:
    """XOR the lowest bit of one data byte (of ``tensor``, or of the first tensor)."""
    header = read_header(path)
    info = header.tensors[tensor] if tensor else min(header.tensors.values(), key=lambda t: t.start)
    with open(path, "r+b") as handle:
        handle.seek(info.start)
        byte = handle.read(1)[0]
        handle.seek(info.start)
        handle.write(bytes([byte ^ 0x01]))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def set_value(path: Path, tensor: str | None, value: float) -> None:
    """Put NaN/Inf into one element of a tensor file and keep its metadata."""
    tensors = load_file(str(path))
    name = tensor or next(n for n, t in sorted(tensors.items()) if t.is_floating_point())
    tensors[name].view(-1)[0] = value
    save_file(tensors, str(path), metadata=read_header(path).metadata)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


# -- the corruptions: name -> plant(ckpt); expected (code, file) pairs -----------------------------
def _flip_shard(ck: Path, root: Path) -> None:
    name = "transformer.h.1.mlp.c_proj.weight"  # not shared with the reference
    flip_byte(ck / shard_of(ck, name), name)


def _flip_adapter(ck: Path, root: Path) -> None:
    flip_byte(ck / ADAPTER)


def _flip_head(ck: Path, root: Path) -> None:
    flip_byte(ck / VALUE_HEAD_NAME, V_HEAD_WEIGHT)


def _flip_ref(ck: Path, root: Path) -> None:
    flip_byte(ck / REF / SAFE_WEIGHTS_NAME)


def _flip_index(ck: Path, root: Path) -> None:
    path = ck / SAFE_WEIGHTS_INDEX_NAME
    path.write_text(path.read_text().replace('"metadata"', '"metadatA"'))  # same size, other bytes


def _truncate_shard(ck: Path, root: Path) -> None:
    truncate(ck / shards(ck)[0])


def _truncate_adapter(ck: Path, root: Path) -> None:
    truncate(ck / ADAPTER)


def _truncate_head(ck: Path, root: Path) -> None:
    truncate(ck / VALUE_HEAD_NAME, 0.9)


def _missing_shard(ck: Path, root: Path) -> None:
    (ck / shards(ck)[-1]).unlink()


def _missing_adapter(ck: Path, root: Path) -> None:
    (ck / ADAPTER).unlink()


def _missing_head(ck: Path, root: Path) -> None:
    (ck / VALUE_HEAD_NAME).unlink()


def _missing_ref_weights(ck: Path, root: Path) -> None:
    (ck / REF / SAFE_WEIGHTS_NAME).unlink()


def _extra_file(ck: Path, root: Path) -> None:
    (ck / "notes.txt").write_text("hello")


def _extra_adapter_file(ck: Path, root: Path) -> None:
    (ck / "adapters" / "reward_adapter" / "extra.bin").write_bytes(b"\x80\x04K\x01.")


def _manifest_hash_edited(ck: Path, root: Path) -> None:
    edit_json(ck / MANIFEST_NAME, lambda m: m["files"][VALUE_HEAD_NAME].update(sha256="0" * 64))


def _manifest_size_edited(ck: Path, root: Path) -> None:
    edit_json(ck / MANIFEST_NAME, lambda m: m["files"]["config.json"].update(size=1))


def _manifest_model_type_edited(ck: Path, root: Path) -> None:
    edit_json(ck / MANIFEST_NAME, lambda m: m.update(model_type="llama"))


def _manifest_hidden_edited(ck: Path, root: Path) -> None:
    edit_json(ck / MANIFEST_NAME, lambda m: m["value_head"].update(hidden_size=64))


def _manifest_file_dropped(ck: Path, root: Path) -> None:
    edit_json(ck / MANIFEST_NAME, lambda m: m["files"].pop("tokenizer.json"))


def _manifest_not_json(ck: Path, root: Path) -> None:
    path = ck / MANIFEST_NAME
    path.write_text(path.read_text()[:-20])


def _manifest_escaping_path(ck: Path, root: Path) -> None:
    edit_json(ck / MANIFEST_NAME, lambda m: m["files"].update({"../outside": m["files"]["config.json"]}))


def _manifest_wrong_type(ck: Path, root: Path) -> None:
    edit_json(ck / MANIFEST_NAME, lambda m: m["value_head"].update(hidden_size="32"))


def _nan_head(ck: Path, root: Path) -> None:
    set_value(ck / VALUE_HEAD_NAME, V_HEAD_WEIGHT, float("nan"))
    refresh(ck)


def _inf_head(ck: Path, root: Path) -> None:
    set_value(ck / VALUE_HEAD_NAME, "v_head.summary.bias", float("-inf"))
    refresh(ck)


def _nan_base(ck: Path, root: Path) -> None:
    name = "transformer.h.1.mlp.c_fc.bias"
    set_value(ck / shard_of(ck, name), name, float("nan"))
    refresh(ck)


def _inf_base(ck: Path, root: Path) -> None:
    name = "transformer.ln_f.weight"
    set_value(ck / shard_of(ck, name), name, float("inf"))
    refresh(ck)


def _nan_adapter(ck: Path, root: Path) -> None:
    set_value(ck / ADAPTER, None, float("nan"))
    refresh(ck)


def _head_hidden(ck: Path, root: Path) -> None:
    save_file(
        {V_HEAD_WEIGHT: torch.zeros(1, 64), "v_head.summary.bias": torch.zeros(1)},
        str(ck / VALUE_HEAD_NAME),
        metadata={"format": "pt"},
    )
    refresh(ck)


def _head_shape(ck: Path, root: Path) -> None:
    save_file(
        {V_HEAD_WEIGHT: torch.zeros(2, 32), "v_head.summary.bias": torch.zeros(2)},
        str(ck / VALUE_HEAD_NAME),
        metadata={"format": "pt"},
    )
    refresh(ck)


def _head_dtype(ck: Path, root: Path) -> None:
    save_file(
        {V_HEAD_WEIGHT: torch.zeros(1, 32, dtype=torch.int32), "v_head.summary.bias": torch.zeros(1)},
        str(ck / VALUE_HEAD_NAME),
        metadata={"format": "pt"},
    )
    refresh(ck)


def _head_half(ck: Path, root: Path) -> None:
    save_file(
        {
            V_HEAD_WEIGHT: torch.zeros(1, 32, dtype=torch.float16),
            "v_head.summary.bias": torch.zeros(1, dtype=torch.float16),
        },
        str(ck / VALUE_HEAD_NAME),
        metadata={"format": "pt"},
    )
    refresh(ck)


def _policy_changed(ck: Path, root: Path) -> None:
    """The policy trained a layer it shares with its reference (bytes changed, manifest re-hashed)."""
    name = "transformer.h.0.attn.c_attn.weight"
    flip_byte(ck / shard_of(ck, name), name)
    refresh(ck)


def _adapter_other_base(ck: Path, root: Path) -> None:
    other = root / "rm-llama"
    target = ck / "adapters" / "reward_adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copyfile(other / name, target / name)
    refresh(ck)


def _adapter_config_broken(ck: Path, root: Path) -> None:
    (ck / ADAPTER_CONFIG).write_text("{not json")
    refresh(ck)


def _base_tensor_dropped(ck: Path, root: Path) -> None:
    name = "transformer.ln_f.bias"
    path = ck / shard_of(ck, name)
    tensors = load_file(str(path))
    del tensors[name]
    save_file(tensors, str(path), metadata={"format": "pt"})
    edit_json(ck / SAFE_WEIGHTS_INDEX_NAME, lambda d: d["weight_map"].pop(name))
    refresh(ck)


def _base_shape(ck: Path, root: Path) -> None:
    edit_json(ck / "config.json", lambda c: c.update(vocab_size=1000))
    refresh(ck)


def _no_base_weights(ck: Path, root: Path) -> None:
    for shard in shards(ck):
        (ck / shard).unlink()
    (ck / SAFE_WEIGHTS_INDEX_NAME).unlink()
    refresh(ck)


def _manifest_deleted(ck: Path, root: Path) -> None:
    (ck / MANIFEST_NAME).unlink()


def _config_missing(ck: Path, root: Path) -> None:
    (ck / "config.json").unlink()
    refresh(ck)


def _config_not_object(ck: Path, root: Path) -> None:
    (ck / "config.json").write_text("[1, 2]")
    refresh(ck)


def _reference_moved(ck: Path, root: Path) -> None:
    shutil.move(ck / REF, ck.parent / "elsewhere")


def _reference_without_policy(ck: Path, root: Path) -> None:
    edit_json(ck / REF / MANIFEST_NAME, lambda m: m["reference"].update(policy="../../nowhere"))


def _reference_stores_shared(ck: Path, root: Path) -> None:
    name = "transformer.wte.weight"
    tensors = load_file(str(ck / REF / SAFE_WEIGHTS_NAME))
    tensors[name] = load_file(str(ck / shard_of(ck, name)))[name]
    save_file(tensors, str(ck / REF / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    refresh(ck / REF)


def _extra_tensor(ck: Path, root: Path) -> None:
    path = ck / shards(ck)[-1]
    tensors = load_file(str(path))
    tensors["transformer.h.9.extra.weight"] = torch.ones(3)
    save_file(tensors, str(path), metadata={"format": "pt"})
    edit_json(
        ck / SAFE_WEIGHTS_INDEX_NAME,
        lambda d: d["weight_map"].update({"transformer.h.9.extra.weight": shards(ck)[-1]}),
    )
    refresh(ck)


def _tensor_dtype(ck: Path, root: Path) -> None:
    name = "transformer.h.1.ln_2.weight"
    path = ck / shard_of(ck, name)
    tensors = load_file(str(path))
    tensors[name] = tensors[name].half()
    save_file(tensors, str(path), metadata={"format": "pt"})
    refresh(ck)


def _index_wrong_shard(ck: Path, root: Path) -> None:
    name = "transformer.ln_f.weight"
    wrong = next(s for s in shards(ck) if s != shard_of(ck, name))
    edit_json(ck / SAFE_WEIGHTS_INDEX_NAME, lambda d: d["weight_map"].update({name: wrong}))
    refresh(ck)


def _symlink_out(ck: Path, root: Path) -> None:
    outside = ck.parent / "outside.json"
    outside.write_text("{}")
    (ck / "tokenizer_config.json").unlink()
    (ck / "tokenizer_config.json").symlink_to(outside)


SHARD = "model-000"  # shard names depend on how transformers packs the tensors
ANY = ""  # problems about the whole model (a missing tensor) name no file
# name: (plant, {(code, file prefix)} that must all be reported, other codes that may follow from it)
CASES: dict[str, tuple[Callable[[Path, Path], None], set[tuple[str, str]], set[str]]] = {
    "flipped byte in a shard": (_flip_shard, {("hash-mismatch", SHARD)}, set()),
    "flipped byte in an adapter": (_flip_adapter, {("hash-mismatch", ADAPTER)}, set()),
    "flipped byte in the head": (_flip_head, {("hash-mismatch", VALUE_HEAD_NAME)}, set()),
    "flipped byte in the reference": (_flip_ref, {("hash-mismatch", f"{REF}/{SAFE_WEIGHTS_NAME}")}, set()),
    "changed weight index": (_flip_index, {("hash-mismatch", SAFE_WEIGHTS_INDEX_NAME)}, set()),
    # A truncated or missing shard also loses tensors, and with them the reference's shared ones.
    "truncated shard": (
        _truncate_shard,
        {("size-mismatch", SHARD), ("corrupt-header", SHARD)},
        {"missing-tensor", "reference-policy-changed"},
    ),
    "truncated adapter": (
        _truncate_adapter,
        {("size-mismatch", ADAPTER), ("corrupt-header", ADAPTER)},
        set(),
    ),
    "truncated head": (
        _truncate_head,
        {("size-mismatch", VALUE_HEAD_NAME), ("corrupt-header", VALUE_HEAD_NAME)},
        set(),
    ),
    "missing shard": (
        _missing_shard,
        {("file-missing", SHARD), ("missing-tensor", ANY)},
        {"reference-policy-changed"},
    ),
    "missing adapter weights": (
        _missing_adapter,
        {("file-missing", ADAPTER), ("adapter-missing", ADAPTER)},
        set(),
    ),
    "missing head": (
        _missing_head,
        {("file-missing", VALUE_HEAD_NAME), ("head-missing", VALUE_HEAD_NAME)},
        set(),
    ),
    "missing reference weights": (
        _missing_ref_weights,
        {("file-missing", f"{REF}/{SAFE_WEIGHTS_NAME}"), ("missing-tensor", REF)},
        set(),
    ),
    "no base weights at all": (_no_base_weights, {("weights-missing", ANY)}, {"reference-policy-changed"}),
    "extra file (warning)": (_extra_file, {("unexpected-file", "notes.txt")}, set()),
    "extra pickle in an adapter (warnings)": (
        _extra_adapter_file,
        {
            ("unexpected-file", "adapters/reward_adapter/extra.bin"),
            ("pickle-file", "adapters/reward_adapter/extra.bin"),
        },
        set(),
    ),
    "hand-edited manifest: a hash": (_manifest_hash_edited, {("hash-mismatch", VALUE_HEAD_NAME)}, set()),
    "hand-edited manifest: a size": (_manifest_size_edited, {("size-mismatch", "config.json")}, set()),
    "hand-edited manifest: model type": (
        _manifest_model_type_edited,
        {("manifest-config-mismatch", MANIFEST_NAME)},
        set(),
    ),
    "hand-edited manifest: hidden size": (
        _manifest_hidden_edited,
        {("head-hidden-size", MANIFEST_NAME)},
        set(),
    ),
    "hand-edited manifest: a file dropped": (
        _manifest_file_dropped,
        {("unexpected-file", "tokenizer.json")},
        set(),
    ),
    "hand-edited manifest: broken JSON": (_manifest_not_json, {("manifest-invalid", MANIFEST_NAME)}, set()),
    "hand-edited manifest: escaping path": (
        _manifest_escaping_path,
        {("manifest-invalid", MANIFEST_NAME)},
        set(),
    ),
    "hand-edited manifest: wrong type": (_manifest_wrong_type, {("manifest-invalid", MANIFEST_NAME)}, set()),
    "manifest deleted": (_manifest_deleted, {("manifest-missing", MANIFEST_NAME)}, set()),
    "config.json missing": (_config_missing, {("config-missing", "config.json")}, set()),
    "config.json not an object": (_config_not_object, {("config-invalid", "config.json")}, set()),
    "NaN in the head": (_nan_head, {("nonfinite-head", VALUE_HEAD_NAME)}, set()),
    "Inf in the head": (_inf_head, {("nonfinite-head", VALUE_HEAD_NAME)}, set()),
    "NaN in the base": (_nan_base, {("nonfinite-base", SHARD)}, set()),
    "Inf in the base": (_inf_base, {("nonfinite-base", SHARD)}, set()),
    "NaN in an adapter": (_nan_adapter, {("nonfinite-adapter", ADAPTER)}, set()),
    "head for another hidden size": (_head_hidden, {("head-hidden-size", VALUE_HEAD_NAME)}, set()),
    "head of the wrong shape": (_head_shape, {("head-shape", VALUE_HEAD_NAME)}, set()),
    "head of an integer dtype": (_head_dtype, {("head-dtype", VALUE_HEAD_NAME)}, set()),
    "head dtype differs from the manifest": (_head_half, {("head-dtype", VALUE_HEAD_NAME)}, set()),
    "base tensor missing": (_base_tensor_dropped, {("missing-tensor", ANY)}, set()),
    "base tensor not in the model": (_extra_tensor, {("unexpected-tensor", SHARD)}, set()),
    "base tensor shape vs config": (_base_shape, {("shape-mismatch", SHARD)}, set()),
    "base tensor dtype vs config": (_tensor_dtype, {("dtype-mismatch", SHARD)}, set()),
    "index names the wrong shard": (
        _index_wrong_shard,
        {("index-invalid", SAFE_WEIGHTS_INDEX_NAME)},
        {"missing-tensor", "reference-policy-changed", "reference-tensors"},
    ),
    "policy's shared tensors changed": (
        _policy_changed,
        {("reference-policy-changed", f"{REF}/{MANIFEST_NAME}")},
        set(),
    ),
    "reference's policy gone": (
        _reference_without_policy,
        {("reference-policy-missing", f"{REF}/{MANIFEST_NAME}")},
        set(),
    ),
    "reference stores shared tensors": (
        _reference_stores_shared,
        {("reference-tensors", REF)},
        {"unexpected-tensor", "missing-tensor"},
    ),
    "reference moved away (warning)": (_reference_moved, {("reference-missing", MANIFEST_NAME)}, set()),
    "adapter for another base": (
        _adapter_other_base,
        {("adapter-base-mismatch", ADAPTER)},
        {"adapter-base-name"},
    ),
    "adapter config unreadable": (_adapter_config_broken, {("adapter-invalid", ADAPTER_CONFIG)}, set()),
    "symlink leading outside": (_symlink_out, {("symlink-outside", "tokenizer_config.json")}, set()),
}
WARNING_ONLY = {name for name in CASES if "warning" in name} | {"hand-edited manifest: a file dropped"}


def test_clean_checkpoint(ckpt: Path) -> None:
    assert validate(ckpt) == (0, [])
    assert len(shards(ckpt)) >= 3  # the shard cases need a really sharded base


@pytest.mark.parametrize("name", list(CASES))
def test_corruption_is_caught(ckpt: Path, template: Path, name: str) -> None:
    plant, expected, consequences = CASES[name]
    plant(ckpt, template.parent)
    code, problems = validate(ckpt)
    found = {(p["code"], p["file"] or "") for p in problems}
    for want_code, want_file in expected:
        assert any(c == want_code and f.startswith(want_file) for c, f in found), (name, found)
    # Nothing unrelated is reported: every problem is an expected code or a consequence of it.
    assert {c for c, _ in expected} <= {c for c, _ in found} <= {c for c, _ in expected} | consequences, (
        name,
        found,
    )
    assert all(p["message"] for p in problems)
    if name in WARNING_ONLY:
        assert code == 0 and all(p["severity"] == "warning" for p in problems)
    else:
        assert code == 1 and any(p["severity"] == "error" for p in problems)


def test_every_problem_code_is_documented_and_distinct_cases_covered() -> None:
    from vhctl.checkpoint.validate import PROBLEM_CODES

    used = {c for _, expected, _ in CASES.values() for c, _ in expected}
    assert used <= set(PROBLEM_CODES)
    # Every code but file-unreadable (needs an I/O error; root reads everything), nonfinite-* apart.
    assert set(PROBLEM_CODES) - used <= {"file-unreadable", "config-unsupported", "adapter-base-name"}, (
        set(PROBLEM_CODES) - used
    )
