"""OpenRLHF critic / reward model interop (oracle: OpenRLHF's class rebuilt from its documented structure)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.formats import (
    TOL,
    assert_same_base,
    config_of,
    head_of,
    input_ids,
    openrlhf_model,
    set_head,
    trl_checkpoint,
    vhctl_values,
)
from helpers.tiny_models import tiny_config

from vhctl.checkpoint.manifest import Manifest
from vhctl.constants import CONFIG_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT
from vhctl.errors import CheckpointError, UnsupportedModelError
from vhctl.formats import normalization_of, normalize
from vhctl.formats.keymaps import VHCTL_EXPORT_FIELD
from vhctl.ops.export import export_checkpoint
from vhctl.ops.wrap import wrap_model


def make_openrlhf(
    arch: str,
    folder,
    *,
    prefix: str = "score",
    mean: float | None = None,
    std: float | None = None,
    normalize_reward: bool = False,
    seed: int = 0,
) -> dict:
    """An OpenRLHF reward model as its trainer saves one: backbone under base_model_prefix, a
    bias-free head under ``prefix``, and the config fields OpenRLHF sets."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    config = tiny_config(arch)
    torch.manual_seed(seed)
    backbone = AutoModel.from_config(config)
    base = backbone.base_model_prefix
    state = {f"{base}.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    state[f"{prefix}.weight"] = torch.randn(1, config.hidden_size) / 4
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    data = config.to_dict()
    data.update({"architectures": ["RewardModel"], "normalize_reward": normalize_reward, "use_cache": False})
    if prefix != "value_head":  # old OpenRLHF checkpoints did not record the prefix
        data["value_head_prefix"] = prefix
    if mean is not None:
        data.update({"mean": mean, "std": std})
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    return state


def _mask(ids: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(ids)


@pytest.mark.parametrize(("arch", "prefix"), [("llama", "score"), ("gpt2", "value_head")])
def test_import_openrlhf_reward_model(arch: str, prefix: str, tmp_path) -> None:
    state = make_openrlhf(arch, tmp_path / "rm", prefix=prefix, mean=0.5, std=2.0)
    result = wrap_model(str(tmp_path / "rm"), tmp_path / "ck")
    assert result.head_from == "openrlhf"
    head = head_of(tmp_path / "ck")
    assert torch.equal(head[V_HEAD_WEIGHT], state[f"{prefix}.weight"]) and head[V_HEAD_BIAS].item() == 0
    ids = input_ids()
    oracle = openrlhf_model(tmp_path / "rm", normalize_reward=False, value_head_prefix=prefix)
    with torch.no_grad():
        rewards = oracle(ids, _mask(ids))
    assert torch.allclose(vhctl_values(tmp_path / "ck", ids)[:, -1], rewards, atol=TOL, rtol=0)

    manifest = Manifest.read(tmp_path / "ck")
    assert normalization_of(manifest) == (0.5, 2.0)
    assert manifest.extra["imported_from"]["config"]["normalize_reward"] is False
    cfg = config_of(tmp_path / "ck")
    assert not {"value_head_prefix", "normalize_reward", "mean", "std"} & set(cfg)
    # The normalised reward OpenRLHF gives with normalize_reward is (value - mean) / std.
    normalised = openrlhf_model(tmp_path / "rm", normalize_reward=True, value_head_prefix=prefix)
    with torch.no_grad():
        expected = normalised(ids, _mask(ids))
    got = torch.tensor([normalize(float(v), normalization_of(manifest)) for v in rewards])
    assert torch.allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_openrlhf_round_trip_and_oracle(arch: str, tmp_path) -> None:
    ck = trl_checkpoint(arch, tmp_path)
    ids = input_ids()
    values = vhctl_values(ck, ids)
    mode = "auto" if arch == "gpt2" else "config"
    result = export_checkpoint(ck, "openrlhf", tmp_path / "oprl", bias=mode)
    assert result.bias == ("norm" if arch == "gpt2" else "config")
    cfg = config_of(tmp_path / "oprl")
    assert cfg["value_head_prefix"] == "score" and cfg["architectures"] == ["CriticModel"]
    critic = openrlhf_model(tmp_path / "oprl", kind="critic")
    with torch.no_grad():
        got = critic(ids, _mask(ids))
    offset = 0.0 if arch == "gpt2" else 0.25  # config mode: OpenRLHF's raw scores are value - bias
    assert torch.allclose(got + offset, values, atol=TOL, rtol=0)

    wrap_model(str(tmp_path / "oprl"), tmp_path / "back")
    assert torch.allclose(head_of(tmp_path / "back")[V_HEAD_BIAS], head_of(ck)[V_HEAD_BIAS], atol=TOL, rtol=0)
    assert torch.equal(head_of(tmp_path / "back")[V_HEAD_WEIGHT], head_of(ck)[V_HEAD_WEIGHT])
    assert_same_base(ck, tmp_path / "back", atol=TOL)
    assert torch.allclose(vhctl_values(tmp_path / "back", ids), values, atol=TOL, rtol=0)


def test_bias_folded_into_the_mean_gives_exact_normalised_rewards(tmp_path) -> None:
    ck = trl_checkpoint("llama", tmp_path)
    ids = input_ids()
    values = vhctl_values(ck, ids)[:, -1]
    with pytest.raises(UnsupportedModelError, match="--bias mean"):
        export_checkpoint(ck, "openrlhf", tmp_path / "refused")

    # No normalisation yet: OpenRLHF's "normalised" reward is exactly vhctl's value.
    result = export_checkpoint(ck, "openrlhf", tmp_path / "mean", bias="mean", value_head_prefix="value_head")
    assert result.bias == "mean"
    cfg = config_of(tmp_path / "mean")
    assert cfg["normalize_reward"] is True and cfg["mean"] == -0.25 and cfg["std"] == 1.0
    oracle = openrlhf_model(tmp_path / "mean", normalize_reward=True)
    with torch.no_grad():
        assert torch.allclose(oracle(ids, _mask(ids)), values, atol=TOL, rtol=0)
    wrap_model(str(tmp_path / "mean"), tmp_path / "back")
    assert head_of(tmp_path / "back")[V_HEAD_BIAS].item() == 0.25
    assert normalization_of(Manifest.read(tmp_path / "back")) is None

    # With a normalisation (from an OpenRLHF import), the normalised rewards agree.
    manifest = Manifest.read(ck)
    manifest.extra["reward_normalization"] = {"mean": 1.5, "std": 0.5}
    manifest.write(ck)
    export_checkpoint(ck, "openrlhf", tmp_path / "mean2", bias="mean")
    oracle = openrlhf_model(tmp_path / "mean2", normalize_reward=True)
    with torch.no_grad():
        assert torch.allclose(oracle(ids, _mask(ids)), (values - 1.5) / 0.5, atol=TOL, rtol=0)
    wrap_model(str(tmp_path / "mean2"), tmp_path / "back2")
    assert normalization_of(Manifest.read(tmp_path / "back2")) == (1.5, 0.5)


def test_import_export_keeps_openrlhf_fields(tmp_path) -> None:
    make_openrlhf("gpt2", tmp_path / "rm", prefix="value_head", mean=-1.0, std=3.0, normalize_reward=True)
    wrap_model(str(tmp_path / "rm"), tmp_path / "ck")
    export_checkpoint(tmp_path / "ck", "openrlhf", tmp_path / "again")
    cfg = config_of(tmp_path / "again")
    assert cfg["architectures"] == ["RewardModel"] and cfg["normalize_reward"] is True
    assert (cfg["mean"], cfg["std"]) == (-1.0, 3.0)
    assert cfg["value_head_prefix"] == "value_head"  # the head keeps its name
    ids = input_ids()
    before = openrlhf_model(tmp_path / "rm", value_head_prefix="value_head")
    after = openrlhf_model(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(before(ids, _mask(ids)), after(ids, _mask(ids)))
    assert cfg[VHCTL_EXPORT_FIELD]["bias"] == "zero"


def test_openrlhf_refusals(tmp_path) -> None:
    t5 = trl_checkpoint("t5", tmp_path)
    with pytest.raises(UnsupportedModelError, match="seq2seq"):
        export_checkpoint(t5, "openrlhf", tmp_path / "a")
    opt = trl_checkpoint("opt", tmp_path)  # projects its output: config.hidden_size is not the head's width
    set_head(opt, bias=0.0)
    with pytest.raises(UnsupportedModelError, match="hidden_size"):
        export_checkpoint(opt, "openrlhf", tmp_path / "b")
    make_openrlhf("gpt2", tmp_path / "bad", prefix="score")
    data = json.loads((tmp_path / "bad" / CONFIG_NAME).read_text())
    data["value_head_prefix"] = "critic_head"
    (tmp_path / "bad" / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="critic_head.weight"):
        wrap_model(str(tmp_path / "bad"), tmp_path / "c")
    assert not (tmp_path / "c").exists()
