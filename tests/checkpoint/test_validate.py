"""validate_checkpoint: each planted corruption is reported with its stable code; clean checkpoints pass."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import (  # noqa: F401
    HIDDEN,
    attach_adapter,
    codes,
    errors,
    flip_byte,
    make_adapter,
    make_reference,
    refresh,
    rewrite_base,
    save_gpt2,
    save_t5,
    write_head,
    write_manifest,
)
from safetensors.torch import load_file, save_file

from vhctl.checkpoint.manifest import Manifest, ValueHeadInfo
from vhctl.checkpoint.tensors import shared_tensors_sha256, state_dict_sha256
from vhctl.checkpoint.validate import PROBLEM_CODES, has_errors, validate_checkpoint
from vhctl.constants import (
    ARCH_SEQ2SEQ,
    MANIFEST_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)
from vhctl.errors import NotAModelError, SourceNotFoundError

torch.set_num_threads(1)


def test_clean_checkpoint_has_no_problems(ckpt: Path) -> None:
    assert validate_checkpoint(ckpt) == []
    assert validate_checkpoint(ckpt, deep=True) == []


def test_clean_t5_checkpoint_has_no_problems(tmp_path: Path) -> None:
    folder = save_t5(tmp_path / "t5")
    write_head(folder)
    write_manifest(folder, architecture=ARCH_SEQ2SEQ, model_type="t5")
    assert validate_checkpoint(folder, deep=True) == []


def test_clean_bf16_and_sharded_checkpoints(tmp_path: Path) -> None:
    bf16 = save_gpt2(tmp_path / "bf16", dtype=torch.bfloat16)
    write_head(bf16)
    write_manifest(bf16)
    assert validate_checkpoint(bf16, deep=True) == []

    sharded = save_gpt2(tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / SAFE_WEIGHTS_INDEX_NAME).is_file()
    write_head(sharded)
    write_manifest(sharded)
    assert validate_checkpoint(sharded, deep=True) == []
    shard = json.loads((sharded / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"][
        "transformer.wte.weight"
    ]
    (sharded / shard).unlink()
    problems = validate_checkpoint(sharded)
    assert "file-missing" in codes(problems)
    assert "missing-tensor" in codes(problems)


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [("gpt_neox", {}), ("opt", {"word_embed_proj_dim": 16, "ffn_dim": 64}), ("llama", {})],
)
def test_clean_other_families(tmp_path: Path, model_type: str, extra: dict) -> None:
    """GPT-NeoX saves lm_head as embed_out and OPT's head reads word_embed_proj_dim: both must pass."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=100,
        **extra,
    )
    torch.manual_seed(0)
    folder = tmp_path / model_type
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    hidden = extra.get("word_embed_proj_dim", HIDDEN)
    write_head(folder, hidden=hidden)
    write_manifest(
        folder, model_type=model_type, value_head=ValueHeadInfo(file=VALUE_HEAD_NAME, hidden_size=hidden)
    )
    assert validate_checkpoint(folder, deep=True) == []
    write_head(folder, hidden=HIDDEN + 8)
    refresh(folder)
    assert codes(validate_checkpoint(folder)) == {"head-hidden-size"}


def test_unknown_model_type_is_a_warning(ckpt: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "mystery-model"
    (ckpt / "config.json").write_text(json.dumps(config))
    manifest = Manifest.read(ckpt)
    manifest.model_type = "mystery-model"
    manifest.refresh_files(ckpt)
    manifest.write(ckpt)
    problems = validate_checkpoint(ckpt)
    assert [(p.code, p.severity) for p in problems] == [("config-unsupported", "warning")]


def test_bad_paths_raise(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        validate_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAModelError):
        validate_checkpoint(tmp_path / "file")


def test_problem_to_dict_and_codes_documented(ckpt: Path) -> None:
    (ckpt / VALUE_HEAD_NAME).unlink()
    problems = validate_checkpoint(ckpt)
    assert problems and all(p.code in PROBLEM_CODES for p in problems)
    d = problems[0].to_dict()
    assert set(d) == {"code", "file", "message", "severity"}
    json.dumps([p.to_dict() for p in problems])
    assert has_errors(problems)


# -- files against the manifest -------------------------------------------------------------------
def test_flipped_byte_in_base_and_head(ckpt: Path) -> None:
    flip_byte(ckpt / SAFE_WEIGHTS_NAME, "transformer.h.0.ln_1.weight")
    flip_byte(ckpt / VALUE_HEAD_NAME, V_HEAD_WEIGHT)
    problems = validate_checkpoint(ckpt)
    assert {(p.code, p.file) for p in problems} == {
        ("hash-mismatch", SAFE_WEIGHTS_NAME),
        ("hash-mismatch", VALUE_HEAD_NAME),
    }


def test_truncated_file(ckpt: Path) -> None:
    path = ckpt / SAFE_WEIGHTS_NAME
    os.truncate(path, path.stat().st_size - 10)
    found = {(p.code, p.file) for p in validate_checkpoint(ckpt)}
    assert ("size-mismatch", SAFE_WEIGHTS_NAME) in found
    assert ("corrupt-header", SAFE_WEIGHTS_NAME) in found


def test_missing_files(ckpt: Path) -> None:
    (ckpt / "generation_config.json").unlink()
    (ckpt / VALUE_HEAD_NAME).unlink()
    found = {(p.code, p.file) for p in validate_checkpoint(ckpt)}
    assert ("file-missing", "generation_config.json") in found
    assert ("file-missing", VALUE_HEAD_NAME) in found
    assert ("head-missing", VALUE_HEAD_NAME) in found


def test_missing_base_weights(ckpt: Path) -> None:
    (ckpt / SAFE_WEIGHTS_NAME).unlink()
    refresh(ckpt)
    assert codes(validate_checkpoint(ckpt)) == {"weights-missing"}


def test_extra_file_is_a_warning_only(ckpt: Path) -> None:
    (ckpt / "notes.txt").write_text("hello")
    problems = validate_checkpoint(ckpt)
    assert [(p.code, p.file, p.severity) for p in problems] == [("unexpected-file", "notes.txt", "warning")]
    assert not has_errors(problems)


def test_pickle_file_is_a_warning(ckpt: Path) -> None:
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04")
    refresh(ckpt)
    problems = validate_checkpoint(ckpt)
    assert [(p.code, p.severity) for p in problems] == [("pickle-file", "warning")]


def test_manifest_missing_and_invalid(ckpt: Path) -> None:
    text = (ckpt / MANIFEST_NAME).read_text()
    (ckpt / MANIFEST_NAME).unlink()
    assert codes(validate_checkpoint(ckpt)) == {"manifest-missing"}
    (ckpt / MANIFEST_NAME).write_text(text[:-20])
    assert codes(validate_checkpoint(ckpt)) == {"manifest-invalid"}
    data = json.loads(text)
    data["files"]["../outside.txt"] = {"size": 1, "sha256": "0" * 64}
    (ckpt / MANIFEST_NAME).write_text(json.dumps(data))
    problems = validate_checkpoint(ckpt)
    assert codes(problems) == {"manifest-invalid"}
    assert "outside.txt" in problems[0].message


def test_hand_edited_manifest(ckpt: Path) -> None:
    data = json.loads((ckpt / MANIFEST_NAME).read_text())
    data["files"]["config.json"]["sha256"] = "a" * 64
    data["model_type"] = "llama"
    data["architecture"] = ARCH_SEQ2SEQ
    (ckpt / MANIFEST_NAME).write_text(json.dumps(data))
    problems = validate_checkpoint(ckpt)
    assert ("hash-mismatch", "config.json") in {(p.code, p.file) for p in problems}
    mismatches = [p.message for p in problems if p.code == "manifest-config-mismatch"]
    assert len(mismatches) == 2
    assert any("llama" in m for m in mismatches) and any(ARCH_SEQ2SEQ in m for m in mismatches)


def test_symlink_escaping(ckpt: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, ckpt / "tokenizer_config.json")
    (ckpt / "sub").mkdir()
    os.symlink(tmp_path, ckpt / "sub" / "escape")
    os.symlink(ckpt / "config.json", ckpt / "inside.json")  # inside: fine
    refresh(ckpt)
    problems = validate_checkpoint(ckpt)
    assert {(p.code, p.file) for p in problems} == {
        ("symlink-outside", "tokenizer_config.json"),
        ("symlink-outside", "sub/escape"),
    }


def test_hub_cache_snapshot_symlinks_are_fine(ckpt: Path, tmp_path: Path) -> None:
    """A download in the HF cache is a folder of symlinks to ../../blobs: that is not an escape."""
    repo = tmp_path / "cache" / "models--org--name"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    shutil.copytree(ckpt, snapshot)
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        blob = repo / "blobs" / path.name
        path.rename(blob)
        os.symlink(os.path.relpath(blob, path.parent), path)
    assert validate_checkpoint(snapshot, deep=True) == []


# -- headers and tensors against the config ------------------------------------------------------
def test_corrupt_header(ckpt: Path) -> None:
    (ckpt / VALUE_HEAD_NAME).write_bytes(b"\xff" * 64)
    refresh(ckpt)
    assert codes(validate_checkpoint(ckpt, deep=True)) == {"corrupt-header"}


def test_tensor_set_shape_and_dtype_against_config(ckpt: Path) -> None:
    def change(t: dict[str, torch.Tensor]) -> None:
        del t["transformer.ln_f.bias"]
        t["transformer.h.0.ln_1.weight"] = torch.ones(HIDDEN + 1)
        t["transformer.h.0.ln_2.weight"] = t["transformer.h.0.ln_2.weight"].half()
        t["transformer.extra.weight"] = torch.ones(2)
        t[V_HEAD_WEIGHT] = torch.ones(1, HIDDEN)

    rewrite_base(ckpt, change)
    refresh(ckpt)
    problems = validate_checkpoint(ckpt)
    by_code: dict[str, list[str]] = {}
    for p in problems:
        by_code.setdefault(p.code, []).append(p.message)
    assert set(by_code) == {"missing-tensor", "unexpected-tensor", "shape-mismatch", "dtype-mismatch"}
    assert "transformer.ln_f.bias" in by_code["missing-tensor"][0]
    assert any("transformer.extra.weight" in m for m in by_code["unexpected-tensor"])
    assert any(VALUE_HEAD_NAME in m for m in by_code["unexpected-tensor"])
    assert "transformer.h.0.ln_1.weight" in by_code["shape-mismatch"][0]
    assert "float16" in by_code["dtype-mismatch"][0]


def test_embedding_vs_vocab_size(ckpt: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["vocab_size"] = 120
    (ckpt / "config.json").write_text(json.dumps(config))
    refresh(ckpt)
    problems = validate_checkpoint(ckpt)
    assert codes(problems) == {"shape-mismatch"}
    assert "transformer.wte.weight" in problems[0].message and "(120, 32)" in problems[0].message


def test_config_missing_and_invalid(ckpt: Path) -> None:
    (ckpt / "config.json").write_text("{nope")
    refresh(ckpt)
    assert "config-invalid" in codes(validate_checkpoint(ckpt))
    (ckpt / "config.json").unlink()
    refresh(ckpt)
    assert "config-missing" in codes(validate_checkpoint(ckpt))


# -- many problems of one kind ------------------------------------------------------------------
def _cast_to_half(folder: Path, count: int | None) -> list[str]:
    """Store the first ``count`` base tensors (all when None) as float16; config.json says float32."""
    names = sorted(load_file(str(folder / SAFE_WEIGHTS_NAME)))[:count]

    def change(t: dict[str, torch.Tensor]) -> None:
        for name in names:
            t[name] = t[name].half()

    rewrite_base(folder, change)
    refresh(folder)
    return names


def test_five_problems_of_one_kind_are_listed_one_by_one(ckpt: Path) -> None:
    names = _cast_to_half(ckpt, 5)
    problems = validate_checkpoint(ckpt)
    assert [(p.code, p.file) for p in problems] == [("dtype-mismatch", SAFE_WEIGHTS_NAME)] * 5
    assert [p.message for p in problems] == [f"{n!r} is float16, config.json implies float32" for n in names]


@pytest.mark.parametrize("count", [6, None])
def test_more_than_five_problems_of_one_kind_are_one_problem(ckpt: Path, count: int | None) -> None:
    """The README's promise: a model cast to the wrong dtype gives one line, not one per tensor."""
    names = _cast_to_half(ckpt, count)
    assert len(names) >= 6
    problems = validate_checkpoint(ckpt)
    assert len(problems) == 1
    (p,) = problems
    assert (p.code, p.file, p.severity) == ("dtype-mismatch", SAFE_WEIGHTS_NAME, "error")
    shown = "; ".join(f"{n!r} is float16, config.json implies float32" for n in names[:3])
    assert p.message == f"{len(names)} tensors differ from config.json, e.g. {shown}"


# -- value head ------------------------------------------------------------------------------
def test_nonfinite_values_found_only_when_deep(ckpt: Path) -> None:
    write_head(ckpt, weight=torch.full((1, HIDDEN), float("nan")))

    def change(t: dict[str, torch.Tensor]) -> None:
        t["transformer.h.1.mlp.c_fc.bias"][3] = float("inf")

    rewrite_base(ckpt, change)
    refresh(ckpt)
    assert validate_checkpoint(ckpt) == []
    problems = validate_checkpoint(ckpt, deep=True)
    assert {(p.code, p.file) for p in problems} == {
        ("nonfinite-head", VALUE_HEAD_NAME),
        ("nonfinite-base", SAFE_WEIGHTS_NAME),
    }
    base = next(p for p in problems if p.code == "nonfinite-base")
    assert "transformer.h.1.mlp.c_fc.bias" in base.message and "1 Inf" in base.message
    head = next(p for p in problems if p.code == "nonfinite-head")
    assert V_HEAD_WEIGHT in head.message and f"{HIDDEN} NaN" in head.message


def test_nonfinite_bf16(tmp_path: Path) -> None:
    folder = save_gpt2(tmp_path / "bf16", dtype=torch.bfloat16)
    write_head(folder, dtype=torch.bfloat16, bias=torch.tensor([float("-inf")], dtype=torch.bfloat16))
    write_manifest(
        folder, value_head=ValueHeadInfo(file=VALUE_HEAD_NAME, hidden_size=HIDDEN, dtype="bfloat16")
    )
    assert codes(validate_checkpoint(folder, deep=True)) == {"nonfinite-head"}


def test_head_hidden_size_differs_from_model(ckpt: Path) -> None:
    write_head(ckpt, hidden=16)
    refresh(ckpt)
    problems = validate_checkpoint(ckpt)
    assert [(p.code, p.file) for p in problems] == [("head-hidden-size", VALUE_HEAD_NAME)]
    assert "16" in problems[0].message and "32" in problems[0].message

    manifest = Manifest.read(ckpt)
    manifest.value_head.hidden_size = 16
    manifest.write(ckpt)
    assert ("head-hidden-size", MANIFEST_NAME) in {(p.code, p.file) for p in validate_checkpoint(ckpt)}


def test_head_wrong_shape(ckpt: Path) -> None:
    write_head(ckpt, weight=torch.randn(2, HIDDEN), bias=torch.zeros(2))
    refresh(ckpt)
    problems = validate_checkpoint(ckpt)
    assert codes(problems) == {"head-shape"}
    assert len(problems) == 2


def test_head_missing_key_and_extra_key(ckpt: Path) -> None:
    save_file(
        {V_HEAD_WEIGHT: torch.randn(1, HIDDEN), "v_head.other": torch.zeros(1)},
        str(ckpt / VALUE_HEAD_NAME),
        metadata={"format": "pt"},
    )
    refresh(ckpt)
    assert codes(validate_checkpoint(ckpt)) == {"head-missing", "head-shape"}


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_head_wrong_dtype(ckpt: Path, dtype: torch.dtype) -> None:
    write_head(ckpt, weight=torch.ones(1, HIDDEN, dtype=dtype), bias=torch.zeros(1, dtype=dtype))
    refresh(ckpt)
    problems = validate_checkpoint(ckpt)
    assert codes(problems) == {"head-dtype"}
    assert str(dtype).removeprefix("torch.") in problems[0].message


# -- references ------------------------------------------------------------------------------
def test_clean_reference(ckpt: Path) -> None:
    ref = make_reference(ckpt)
    assert validate_checkpoint(ref, deep=True) == []
    assert validate_checkpoint(ckpt, deep=True) == []


def test_reference_whose_policy_changed(ckpt: Path) -> None:
    ref = make_reference(ckpt)
    flip_byte(ckpt / SAFE_WEIGHTS_NAME, "transformer.wte.weight")
    refresh(ckpt)  # the policy itself is consistent again; only the reference can tell
    problems = validate_checkpoint(ref)
    assert [(p.code, p.file) for p in problems] == [("reference-policy-changed", MANIFEST_NAME)]
    nested = validate_checkpoint(ckpt)
    assert [(p.code, p.file) for p in nested] == [("reference-policy-changed", f"ref/{MANIFEST_NAME}")]
    assert validate_checkpoint(ref, check_policy=False) == []
    assert validate_checkpoint(ckpt, check_policy=False) == []


def test_reference_policy_missing(ckpt: Path, tmp_path: Path) -> None:
    ref = make_reference(ckpt)
    moved = tmp_path / "elsewhere" / "ref"
    moved.parent.mkdir()
    shutil.move(str(ref), moved)
    assert codes(validate_checkpoint(moved)) == {"reference-policy-missing"}
    assert codes(validate_checkpoint(ckpt)) == {"reference-missing"}


def test_reference_storing_shared_tensors(ckpt: Path) -> None:
    ref = make_reference(ckpt)
    policy_tensors = load_file(str(ckpt / SAFE_WEIGHTS_NAME))
    tensors = load_file(str(ref / SAFE_WEIGHTS_NAME))
    tensors["transformer.wte.weight"] = policy_tensors["transformer.wte.weight"]
    del tensors["transformer.h.1.ln_1.bias"]
    save_file(tensors, str(ref / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    refresh(ref)
    problems = validate_checkpoint(ref)
    assert codes(problems) == {"reference-tensors", "missing-tensor"}
    assert "transformer.wte.weight" in next(p for p in problems if p.code == "reference-tensors").message


def test_shared_hash_matches_in_memory_hash(ckpt: Path) -> None:
    tensors = load_file(str(ckpt / SAFE_WEIGHTS_NAME))
    names = ["transformer.wte.weight", "transformer.h.0.ln_1.bias"]
    assert state_dict_sha256(tensors, names) == shared_tensors_sha256(ckpt, names)
    bf16 = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    save_file(bf16, str(ckpt / "bf16.safetensors"))
    (ckpt / SAFE_WEIGHTS_NAME).unlink()
    (ckpt / "bf16.safetensors").rename(ckpt / SAFE_WEIGHTS_NAME)
    assert state_dict_sha256(bf16, names) == shared_tensors_sha256(ckpt, names)


# -- adapters --------------------------------------------------------------------------------
def test_adapter_fits(ckpt: Path, tmp_path: Path) -> None:
    attach_adapter(ckpt, make_adapter(tmp_path / "adapter"))
    assert validate_checkpoint(ckpt, deep=True) == []


def test_adapter_for_another_base(ckpt: Path, tmp_path: Path) -> None:
    attach_adapter(ckpt, make_adapter(tmp_path / "adapter", hidden=64))
    problems = validate_checkpoint(ckpt)
    assert codes(problems) == {"adapter-base-mismatch"}
    text = " ".join(p.message for p in problems)
    assert "score" in text and "lora_A" in text


def test_adapter_missing_and_nonfinite(ckpt: Path, tmp_path: Path) -> None:
    attach_adapter(ckpt, make_adapter(tmp_path / "adapter"))
    path = ckpt / "adapters" / "reward_adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors["base_model.model.score.weight"][0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})
    refresh(ckpt)
    assert codes(validate_checkpoint(ckpt, deep=True)) == {"nonfinite-adapter"}
    shutil.rmtree(ckpt / "adapters" / "reward_adapter")
    assert "adapter-missing" in codes(validate_checkpoint(ckpt))


def test_peft_policy(tmp_path: Path) -> None:
    """A PEFT policy keeps only its adapter at the root; the base is found through base_model.source."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    from vhctl import AutoModelForCausalLMWithValueHead

    src = save_gpt2(tmp_path / "src")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(src),
        peft_config=LoraConfig(r=4, target_modules=["c_attn"], task_type="CAUSAL_LM", fan_in_fan_out=True),
    )
    out = tmp_path / "out"
    model.save_pretrained(out)
    assert validate_checkpoint(out, deep=True) == []
    other = make_adapter(tmp_path / "other", hidden=64)
    shutil.copyfile(other / "adapter_model.safetensors", out / "adapter_model.safetensors")
    refresh(out)
    assert codes(validate_checkpoint(out)) == {"adapter-base-mismatch"}
    shutil.rmtree(src)
    assert [(p.code, p.severity) for p in validate_checkpoint(out)] == [("config-unsupported", "warning")]


# -- checkpoints written by vhctl itself ------------------------------------------------------------
def test_checkpoint_written_by_wrap_and_make_ref(tmp_path: Path) -> None:
    wrap = pytest.importorskip("vhctl.ops.wrap")
    reference = pytest.importorskip("vhctl.ops.make_ref")
    src = save_gpt2(tmp_path / "src")
    out = tmp_path / "out"
    wrap.wrap_model(str(src), out, seed=0)
    reference.make_reference(out, num_shared_layers=1)
    assert validate_checkpoint(out, deep=True) == []
    flip_byte(out / SAFE_WEIGHTS_NAME, "transformer.h.0.attn.c_attn.weight")
    refresh(out)
    assert codes(validate_checkpoint(out)) == {"reference-policy-changed"}
