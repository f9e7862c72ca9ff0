"""Inductor itself (C++ code generation) on three families: compiled values equal the eager ones.

Each test compiles a tiny model from scratch into its own cache folder: a minute or more on a
loaded 2-core machine, so they are ``slow``. The fast tests (tests/scoring/test_compiled.py)
trace the same models with dynamo and AOTAutograd only.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers.tiny_models import make_tiny_model, tiny_tokenizer

from vhctl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from vhctl.io.records import Record
from vhctl.scoring import Scorer

pytestmark = pytest.mark.slow

WORDS = ["the", "cat", "dog", "sat", "on", "a", "blue", "mat", "runs", "far"]


def records(seed: int, n: int) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
        response = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        out.append(Record(line=i + 1, prompt=prompt, response=response))
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_inductor_values_equal_eager(arch, monkeypatch, tmp_path):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    cls = AutoModelForSeq2SeqLMWithValueHead if arch == "t5" else AutoModelForCausalLMWithValueHead
    torch.manual_seed(0)
    model = cls.from_pretrained(make_tiny_model(arch), v_head_init_strategy="normal").eval()
    tok = tiny_tokenizer()
    data = records(11, 24)
    kwargs = {"batch_size": 4, "window": 8, "prefix_sharing": False, "per_token": True}
    eager = list(Scorer(model, tok, compile="off", **kwargs).score(data))
    counters.clear()
    scorer = Scorer(model, tok, compile="on", **kwargs)
    got = list(scorer.score(data[:8]))  # the first window traces the graphs: one per kind of block
    graphs = counters["stats"]["unique_graphs"]
    got += list(scorer.score(data[8:]))
    for mine, theirs in zip(got, eager, strict=True):
        assert abs(mine["value"] - theirs["value"]) <= 1e-5
        torch.testing.assert_close(
            torch.tensor(mine["values"]), torch.tensor(theirs["values"]), atol=1e-5, rtol=0
        )
    assert counters["stats"]["unique_graphs"] == graphs  # no recompile for later shapes
    assert graphs == 1 or arch == "t5"  # T5: the first block of a stack makes the position bias
    assert scorer.compiled  # for real, not the eager fallback
    assert any((tmp_path / "inductor").rglob("*.so")) or any((tmp_path / "inductor").rglob("*.py"))
