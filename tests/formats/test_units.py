"""Unit tests of the interop building blocks: bias folding, normalisation, layout detection."""

from __future__ import annotations

import pytest
import torch
from helpers.formats import trl_checkpoint
from helpers.tiny_models import make_trl_checkpoint, save_tiny_model

from vhctl.checkpoint.manifest import Manifest, ValueHeadInfo
from vhctl.errors import CheckpointError, UnsupportedModelError
from vhctl.formats import detect_foreign_layout, normalization_of, normalize
from vhctl.formats.bias import fold, foldable_key, unfold


def test_fold_adds_exactly_the_bias_and_unfold_undoes_it() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1, 64, generator=generator)
    beta = torch.randn(64, generator=generator)
    folded = fold(beta, weight, 0.3, key="ln_f.bias")
    assert abs(float(weight[0].double() @ (folded.double() - beta.double())) - 0.3) < 1e-7
    assert torch.allclose(unfold(folded, weight, 0.3), beta, atol=1e-7, rtol=0)


def test_fold_refuses_what_the_dtype_cannot_hold() -> None:
    weight = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(UnsupportedModelError, match="float32"):
        fold(torch.full((64,), 3.0, dtype=torch.bfloat16), weight, 0.3, key="ln_f.bias")
    with pytest.raises(UnsupportedModelError, match="zeros"):
        fold(torch.zeros(64), torch.zeros(1, 64), 0.3, key="ln_f.bias")


def test_foldable_key_needs_the_norm_and_no_projection() -> None:
    assert foldable_key("gpt2", ["transformer.ln_f.bias"]) == "transformer.ln_f.bias"
    assert foldable_key("llama", ["model.norm.weight"]) is None
    opt = ["model.decoder.final_layer_norm.bias"]
    assert foldable_key("opt", opt) == opt[0]
    assert foldable_key("opt", [*opt, "model.decoder.project_out.weight"]) is None


def _manifest(extra: dict) -> Manifest:
    return Manifest(
        kind="policy",
        architecture="causal-lm",
        model_type="gpt2",
        value_head=ValueHeadInfo(file="value_head.safetensors", hidden_size=32),
        extra=extra,
    )


def test_normalization_of() -> None:
    assert normalization_of(_manifest({})) is None
    norm = normalization_of(_manifest({"reward_normalization": {"mean": 1, "std": 4}}))
    assert norm == (1.0, 4.0) and normalize(9.0, norm) == 2.0
    for bad in ({"mean": 0, "std": 0}, {"mean": "a", "std": 1}, {"mean": 0, "std": float("nan")}, [1, 2]):
        with pytest.raises(CheckpointError):
            normalization_of(_manifest({"reward_normalization": bad}))


def test_detection_leaves_other_layouts_alone(tmp_path) -> None:
    assert detect_foreign_layout(save_tiny_model("gpt2", tmp_path / "plain")) is None
    make_trl_checkpoint("gpt2", tmp_path / "trl", "safetensors")
    assert detect_foreign_layout(tmp_path / "trl") is None
    assert detect_foreign_layout(trl_checkpoint("gpt2", tmp_path)) is None  # a vhctl checkpoint
    make_trl_checkpoint("gpt2", tmp_path / "bin", "bin")
    assert detect_foreign_layout(tmp_path / "bin") is None  # pickle not allowed: not even opened
    assert detect_foreign_layout(tmp_path / "bin", allow_pickle=True) is None
    assert detect_foreign_layout(tmp_path / "nothing") is None


def test_seq2seq_classifier_is_refused_clearly(tmp_path) -> None:
    from helpers.tiny_models import tiny_config
    from transformers import AutoModelForSequenceClassification

    config = tiny_config("t5")
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "t5rm")
    with pytest.raises(UnsupportedModelError, match="score"):
        detect_foreign_layout(tmp_path / "t5rm")


def test_export_refuses_a_checkpoint_whose_files_changed(tmp_path) -> None:
    from vhctl.errors import IntegrityError
    from vhctl.ops.export import export_checkpoint

    ck = trl_checkpoint("gpt2", tmp_path)
    with open(ck / "model.safetensors", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(IntegrityError, match="validate"):
        export_checkpoint(ck, "trl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
