"""Helpers shared by the tests/formats/test_*.py files (no tests here).

The OpenRLHF oracle below rebuilds OpenRLHF's reward/critic class the way its documentation and
``openrlhf.models.get_llm_for_sequence_regression`` describe it (the backbone class from
``AutoModel`` set under ``base_model_prefix``, ``<value_head_prefix> = Linear(hidden_size, 1,
bias=False)``, mean/std read from the config): OpenRLHF itself needs deepspeed and flash-attn
(CUDA), which cannot be installed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from helpers.tiny_models import TINY_VOCAB, make_trl_checkpoint, tiny_config
from vhctl.constants import CONFIG_NAME, VALUE_HEAD_NAME
from vhctl.modeling import load_checkpoint
from vhctl.ops.wrap import wrap_model

TOL = 1e-6


def input_ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    """Token ids that avoid id 0 (the tiny models' pad/eos), so every pooling picks the last token."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, TINY_VOCAB, (batch, length), generator=generator)


def vhctl_values(folder: Path, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """vhctl's values (batch, seq) for a checkpoint, in eval mode."""
    model = load_checkpoint(folder, **kwargs).eval()
    with torch.no_grad():
        if model.architecture == "seq2seq-lm":
            _, _, value = model(input_ids=ids, decoder_input_ids=ids)
        else:
            _, _, value = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return value


def trl_checkpoint(arch: str, tmp: Path, layout: str = "safetensors") -> Path:
    """A vhctl checkpoint made from a checkpoint TRL 1.12 itself saved (head bias 0.25)."""
    make_trl_checkpoint(arch, tmp / f"trl-src-{arch}", layout)
    out = tmp / f"ck-{arch}-{layout}"
    wrap_model(str(tmp / f"trl-src-{arch}"), out, allow_pickle=layout in ("bin", "peft"))
    return out


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (single file or shards)."""
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("model*.safetensors")):
        out.update(read_tensors(path))
    return out


def head_of(folder: Path) -> dict[str, torch.Tensor]:
    return read_tensors(folder / VALUE_HEAD_NAME)


def set_head(folder: Path, weight: torch.Tensor | None = None, bias: float | None = None) -> None:
    """Overwrite a vhctl checkpoint's head in place (and refresh the manifest's hashes)."""
    from vhctl.checkpoint.heads import write_head
    from vhctl.checkpoint.manifest import Manifest

    head = head_of(folder)
    w = head["v_head.summary.weight"] if weight is None else weight
    b = head["v_head.summary.bias"] if bias is None else torch.tensor([bias], dtype=w.dtype)
    write_head(folder, w, b)
    manifest = Manifest.read(folder)
    manifest.refresh_files(folder)
    manifest.write(folder)


def config_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / CONFIG_NAME).read_text())


def openrlhf_model(
    folder: Path,
    *,
    kind: str = "reward",
    normalize_reward: bool | None = None,
    value_head_prefix: str = "score",
) -> Any:
    """OpenRLHF's model class, rebuilt after its documented structure, loaded from ``folder``.

    Returns a callable ``(input_ids, attention_mask) -> rewards (batch,)`` for ``kind="reward"``,
    or ``-> values (batch, seq)`` for ``kind="critic"`` (without OpenRLHF's ``[:, :-1]`` shift).
    Asserts that loading leaves no key missing or unexpected.
    """
    from torch import nn
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(folder))
    if normalize_reward is not None:
        config.normalize_reward = normalize_reward
    prefix = getattr(config, "value_head_prefix", value_head_prefix)  # the config's wins, as in OpenRLHF
    base_class = AutoModel._model_mapping[type(config)]

    class OpenRLHFModel(base_class.__base__):  # type: ignore[misc, valid-type]
        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            setattr(self, self.base_model_prefix, base_class(cfg))
            setattr(self, prefix, nn.Linear(cfg.hidden_size, 1, bias=False))
            self.normalize_reward = getattr(cfg, "normalize_reward", False)
            self.register_buffer("mean", torch.zeros(1), persistent=False)
            self.register_buffer("std", torch.ones(1), persistent=False)
            if hasattr(cfg, "mean"):
                self.mean[0] = cfg.mean
                self.std[0] = cfg.std
            self.post_init()

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            position_ids = mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(mask == 0, 1)
            out = getattr(self, self.base_model_prefix)(ids, attention_mask=mask, position_ids=position_ids)
            values = getattr(self, prefix)(out["last_hidden_state"]).squeeze(-1)
            if kind == "critic":
                return (values - self.mean) / self.std if self.normalize_reward else values
            eos = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1, keepdim=True)
            reward = values.gather(dim=1, index=eos).squeeze(1)
            return (reward - self.mean) / self.std if self.normalize_reward else reward

    model, info = OpenRLHFModel.from_pretrained(str(folder), config=config, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    if hasattr(config, "mean"):
        # transformers 5 builds the model on the meta device and re-creates non-persistent buffers,
        # so the values set in __init__ are lost: set them again, as the class means to.
        model.mean.fill_(config.mean)
        model.std.fill_(config.std)
    return model.eval()


def seqcls_scores(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """``AutoModelForSequenceClassification`` scores (batch,), asserting a clean load."""
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.num_labels == 1
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 0]


def assert_same_base(before: Path, after: Path, *, atol: float = 0.0) -> None:
    """The base tensors of two checkpoints agree; an LM head the round trip could not carry
    (untied families through a headless format) must have come back as zeros."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(before))
    prefix = AutoModelForCausalLM._model_mapping[type(config)].base_model_prefix
    old, new = folder_tensors(before), folder_tensors(after)
    assert old.keys() == new.keys()
    for key, tensor in old.items():
        if not key.startswith(prefix + "."):
            assert not new[key].any(), key
        elif atol:
            assert torch.allclose(new[key], tensor, atol=atol, rtol=0), key
        else:
            assert torch.equal(new[key], tensor), key


def make_seqcls(arch: str, folder, *, seed: int = 0):
    """A reward model as transformers saves one: *ForSequenceClassification, num_labels=1."""
    from transformers import AutoModelForSequenceClassification

    config = tiny_config(arch)
    config.num_labels = 1
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(folder)
    return model
