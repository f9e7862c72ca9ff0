"""Hand-built checkpoints for the validate, corruption and inspect tests (tiny GPT-2 and T5 folders).

Each builder writes what vhctl would (or a broken variant of it), without going through vhctl.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vhctl.checkpoint.manifest import AdapterInfo, Manifest, ReferenceInfo, ValueHeadInfo
from vhctl.checkpoint.tensors import read_header, shared_tensors_sha256
from vhctl.checkpoint.validate import Problem
from vhctl.constants import (
    ARCH_CAUSAL,
    KIND_POLICY,
    KIND_REFERENCE,
    SAFE_WEIGHTS_NAME,
    V_HEAD_BIAS,
    V_HEAD_WEIGHT,
    VALUE_HEAD_NAME,
)

torch.set_num_threads(1)
HIDDEN = 32


# -- builders (also used by test_inspect.py) ---------------------------------------------------
def save_gpt2(
    folder: Path, *, hidden: int = HIDDEN, dtype: torch.dtype = torch.float32, **save_kw: object
) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=hidden, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).to(dtype).save_pretrained(str(folder), **save_kw)
    return folder


def save_t5(folder: Path) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(num_layers=2, d_model=HIDDEN, d_ff=64, num_heads=2, d_kv=16, vocab_size=100)
    T5ForConditionalGeneration(config).save_pretrained(str(folder))
    return folder


def write_head(
    folder: Path,
    *,
    hidden: int = HIDDEN,
    dtype: torch.dtype = torch.float32,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> None:
    torch.manual_seed(1)
    tensors = {
        V_HEAD_WEIGHT: weight if weight is not None else torch.randn(1, hidden).to(dtype),
        V_HEAD_BIAS: bias if bias is not None else torch.zeros(1, dtype=dtype),
    }
    save_file(tensors, str(folder / VALUE_HEAD_NAME), metadata={"format": "pt"})


def write_manifest(folder: Path, **kw: object) -> Manifest:
    data: dict = dict(
        kind=KIND_POLICY,
        architecture=ARCH_CAUSAL,
        model_type="gpt2",
        value_head=ValueHeadInfo(file=VALUE_HEAD_NAME, hidden_size=HIDDEN),
        base_model={"source": "tiny-gpt2", "revision": None},
    )
    data.update(kw)
    manifest = Manifest(**data)  # type: ignore[arg-type]
    manifest.refresh_files(folder)
    manifest.write(folder)
    return manifest


def refresh(folder: Path) -> None:
    """Re-hash after a deliberate change, so that only the check under test can see it."""
    manifest = Manifest.read(folder)
    manifest.refresh_files(folder)
    manifest.write(folder)


def codes(problems: list[Problem]) -> set[str]:
    return {p.code for p in problems}


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def rewrite_base(folder: Path, change) -> None:
    tensors = load_file(str(folder / SAFE_WEIGHTS_NAME))
    change(tensors)
    save_file(tensors, str(folder / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})


def flip_byte(path: Path, tensor: str) -> None:
    """XOR the lowest mantissa bit of the first element: the value stays finite, the hash changes."""
    info = read_header(path).tensors[tensor]
    with open(path, "r+b") as handle:
        handle.seek(info.start)
        byte = handle.read(1)[0]
        handle.seek(info.start)
        handle.write(bytes([byte ^ 0x01]))


def make_reference(policy: Path, shared_layers: int = 1) -> Path:
    """A reference in POLICY/ref sharing the embeddings and the first layers (as make-ref writes it)."""
    ref = policy / "ref"
    ref.mkdir()
    tensors = load_file(str(policy / SAFE_WEIGHTS_NAME))
    prefixes = ("transformer.wte.", "transformer.wpe.") + tuple(
        f"transformer.h.{i}." for i in range(shared_layers)
    )
    shared = sorted(n for n in tensors if n.startswith(prefixes))
    own = {n: t for n, t in tensors.items() if n not in shared}
    save_file(own, str(ref / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json", VALUE_HEAD_NAME):
        shutil.copyfile(policy / name, ref / name)
    info = ReferenceInfo(
        policy="..",
        num_shared_layers=shared_layers,
        pattern="transformer.h.{layer}",
        shared_tensors=shared,
        shared_sha256=shared_tensors_sha256(policy, shared),
    )
    write_manifest(ref, kind=KIND_REFERENCE, reference=info)
    manifest = Manifest.read(policy)
    manifest.references = ["ref"]
    manifest.frozen = {"num_shared_layers": shared_layers, "pattern": "transformer.h.{layer}"}
    manifest.write(policy)
    return ref


def make_adapter(folder: Path, *, hidden: int = HIDDEN) -> Path:
    """A PEFT LoRA reward adapter (SEQ_CLS: LoRA on c_attn plus a score head) for a GPT-2 of ``hidden``."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=hidden,
        n_head=2,
        vocab_size=100,
        num_labels=1,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = get_peft_model(
        GPT2ForSequenceClassification(config),
        LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["c_attn"], fan_in_fan_out=True),
    )
    model.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    return folder


def attach_adapter(ckpt: Path, src: Path, name: str = "reward_adapter") -> None:
    shutil.copytree(src, ckpt / "adapters" / name)
    manifest = Manifest.read(ckpt)
    manifest.adapters[name] = AdapterInfo(
        path=f"adapters/{name}", peft_type="LORA", task_type="SEQ_CLS", hidden_size=HIDDEN, role="reward"
    )
    manifest.refresh_files(ckpt)
    manifest.write(ckpt)


# -- clean checkpoints -------------------------------------------------------------------------


def modes(root: Path) -> dict[str, int]:
    out = {}
    for path in [root, *root.rglob("*")]:
        out[path.relative_to(root).as_posix() or "."] = stat.S_IMODE(path.lstat().st_mode)
    return out


def assert_like_cp(root: Path, mask: int) -> None:
    wrong = {
        rel: oct(mode)
        for rel, mode in modes(root).items()
        if mode != (0o777 & ~mask if (root / rel).is_dir() else 0o666 & ~mask)
    }
    assert not wrong, f"modes under umask {mask:03o}: {wrong}"
