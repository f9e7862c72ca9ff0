"""CUDA checks (marked ``gpu``; skipped on machines without a CUDA device)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import make_tiny_model, save_tiny_model

from vhctl import AutoModelForCausalLMWithValueHead, create_reference_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_device_map_puts_head_where_last_hidden_state_lands(tmp_path) -> None:
    src = save_tiny_model("llama", tmp_path / "base")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(src), device_map="auto", dtype=torch.bfloat16
    )
    assert model.v_head.summary.weight.device.type == "cuda"
    ids = torch.randint(1, 500, (2, 9), device="cuda")
    logits, _, value = model(ids, attention_mask=torch.ones_like(ids))
    assert value.dtype == torch.float32 and value.device.type == "cuda"
    assert logits.dtype == torch.float32


def test_cuda_values_match_cpu() -> None:
    cpu = AutoModelForCausalLMWithValueHead.from_pretrained(
        make_tiny_model("gpt2"), summary_dropout_prob=0.0, v_head_init_strategy="normal"
    )
    cpu.eval()
    gpu = AutoModelForCausalLMWithValueHead.from_pretrained(make_tiny_model("gpt2"), summary_dropout_prob=0.0)
    gpu.v_head.load_state_dict(cpu.v_head.state_dict())
    gpu = gpu.to("cuda").eval()
    ids = torch.randint(1, 500, (3, 17))
    with torch.no_grad():
        a = cpu(ids)[2]
        b = gpu(ids.cuda())[2].cpu()
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_reference_shares_cuda_storage() -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained(make_tiny_model("gpt2")).to("cuda")
    before = torch.cuda.memory_allocated()
    ref = create_reference_model(model, num_shared_layers=1)
    grown = torch.cuda.memory_allocated() - before
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert grown < total, "the shared layers are not copied"
    assert (
        ref.pretrained_model.transformer.wte.weight.data_ptr()
        == model.pretrained_model.transformer.wte.weight.data_ptr()
    )


def test_scorer_on_cuda_matches_cpu(tmp_path) -> None:
    from vhctl.io.records import iter_records
    from vhctl.modeling import load_checkpoint
    from vhctl.ops.wrap import wrap_model
    from vhctl.scoring import Scorer

    wrap_model("vhctl:tiny", tmp_path / "ck", init="normal", seed=0)
    lines = (
        b"\n".join(
            [
                b"hello there",
                b'{"prompt": "Q: hi", "response": " yes"}',
                b'{"prompt": "Q: hi", "response": " no way"}',
                b"a longer line of text to score",
            ]
        )
        + b"\n"
    )
    import io

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "ck")
    results = {}
    for device in ("cpu", "cuda"):
        model = load_checkpoint(tmp_path / "ck").to(device).eval()
        scorer = Scorer(model, tok, batch_size=2)
        results[device] = [r["value"] for r in scorer.score(iter_records(io.BytesIO(lines)))]
    assert len(results["cpu"]) == 4
    for a, b in zip(results["cpu"], results["cuda"], strict=True):
        assert abs(a - b) < 1e-3
