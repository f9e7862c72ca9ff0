"""``compile``: the policy, the bucketed plan, the on-disk cache folder and the eager fallback.

These tests compile nothing with inductor except one small function (the cache folder test): a
whole model's compile takes minutes on a loaded 2-core machine. The model-level equality tests
trace the real model with dynamo and AOTAutograd (``backend="aot_eager"``, seconds); inductor's
own code generation on GPT-2, Llama and T5 is in tests/scoring/test_compiled_slow.py (``slow``).
"""

from __future__ import annotations

import logging
import random

import pytest
import torch
from helpers.tiny_models import tiny_tokenizer
from helpers.tiny_models import wrapped_tiny as wrap

from vhctl.errors import ModelError, UsageError
from vhctl.io.records import Record
from vhctl.scoring import Scorer
from vhctl.scoring import compiled as compiled_mod
from vhctl.scoring.batching import plan_batches, round_up
from vhctl.scoring.compiled import (
    BUCKET,
    CompiledBlocks,
    CompilePolicy,
    break_even_tokens,
    check_compile_choice,
    compile_pays,
    estimate_lines,
    inductor_cache_dir,
)
from vhctl.scoring.items import Item
from vhctl.scoring.plan import length_batches

WORDS = ["the", "cat", "dog", "sat", "on", "a", "blue", "mat", "runs", "far"]


def texts(seed: int, n: int, high: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, high))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    """The tiny GPT-2 value model and its tokenizer."""
    return wrap("gpt2"), tiny_tokenizer()


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with dynamo + AOTAutograd only: the real trace, graphs and guards, no C++ build."""
    real = torch.compile
    calls = []

    def compile_(function, **kwargs):
        calls.append(kwargs)
        return real(function, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


# ---------------------------------------------------------------------------- choices, cost, sizes


def test_choices_are_checked():
    assert check_compile_choice(" On ") == "on"
    with pytest.raises(UsageError, match="auto, on or off"):
        check_compile_choice("sometimes")


def test_scorer_refuses_a_bad_choice(tiny):
    gpt2, tok = tiny
    with pytest.raises(UsageError):
        Scorer(gpt2, tok, compile="always")


def test_auto_compiles_only_where_a_measurement_says_it_pays(tiny):
    """On a CPU the measured compiled fraction (0.95 to 1.00) is noise: auto stays eager, however long the job."""
    assert not compile_pays("cpu") and not compile_pays("cuda")  # the GPU is not measured: eager too
    assert break_even_tokens(12, 124_000_000, "cpu") is None
    gpt2, tok = tiny
    scorer = Scorer(gpt2, tok, batch_size=4, window=8, compile="auto")
    got = list(
        scorer.score((Record(line=i + 1, text=t) for i, t in enumerate(texts(1, 16))), expected_records=10**9)
    )
    assert len(got) == 16 and not scorer.compiled and not scorer.compiles_from_start


def test_break_even_grows_with_layers_and_shrinks_with_parameters(monkeypatch):
    monkeypatch.setitem(compiled_mod.COMPILED_TIME_FRACTION, "cpu", 0.6)  # a device where it would pay
    monkeypatch.setitem(compiled_mod.COMPILED_TIME_FRACTION, "cuda", 0.6)
    base = break_even_tokens(12, 124_000_000, "cpu")
    assert base is not None
    assert break_even_tokens(24, 124_000_000, "cpu") == pytest.approx(2 * base, abs=1)  # whole tokens
    assert break_even_tokens(12, 248_000_000, "cpu") == pytest.approx(base / 2, abs=1)
    assert break_even_tokens(12, 124_000_000, "cuda") > base  # an eager GPU token is cheaper
    # C eager tokens of compile, then each token costs COMPILED_TIME_FRACTION of its eager time
    saved = base * (1 - 0.6)
    assert saved == pytest.approx(compiled_mod.COMPILE_COST_TOKENS["cpu"], rel=1e-4)


def test_line_estimate_counts_small_files_and_scales_large_ones(tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_bytes(b'{"text": "a"}\n{"text": "b"}\nlast without newline')
    assert estimate_lines(small) == 3
    big = tmp_path / "big.txt"
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(60_000)]
    big.write_text("\n".join(lines) + "\n")
    assert big.stat().st_size > 1 << 20
    assert abs(estimate_lines(big) - len(lines)) < 0.03 * len(lines)
    assert estimate_lines(tmp_path / "missing") is None


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inductor_cache_dir() == tmp_path / "xdg" / "vhctl" / "inductor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert inductor_cache_dir() == tmp_path / "home" / ".cache" / "vhctl" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert inductor_cache_dir() == tmp_path / "mine"


# ---------------------------------------------------------------------------- the auto policy


def test_policy_on_and_off():
    on, off = CompilePolicy("on", 10**9), CompilePolicy("off", 1)
    assert on.window(5, 1) and not off.window(10**6, 1000)


def test_auto_compiles_a_long_file_from_the_first_window():
    policy = CompilePolicy("auto", break_even=100_000)
    policy.start_input(expected_records=10_000)
    assert policy.window(tokens=512 * 20, records=512)  # 10k lines of ~20 tokens: 200k tokens
    short = CompilePolicy("auto", break_even=100_000)
    short.start_input(expected_records=2_000)  # 40k tokens: never pays
    assert not any(short.window(tokens=512 * 20, records=512) for _ in range(4))


def test_auto_on_an_input_of_unknown_length_switches_once_it_has_seen_enough():
    policy = CompilePolicy("auto", break_even=10_000)
    policy.start_input(None)
    decisions = [policy.window(tokens=3_000, records=100) for _ in range(6)]
    assert decisions == [False, False, False, False, True, True]  # 12k tokens seen before window 5
    again = CompilePolicy("auto", break_even=10_000)
    again.start_input(None)
    assert [again.window(tokens=3_000, records=100) for _ in range(6)] == decisions  # no timing in it


# ---------------------------------------------------------------------------- the bucketed plan


def test_buckets_are_counted_in_the_plan():
    rng = random.Random(5)
    items = [Item(index=i, record=Record(line=i + 1), ids=[1] * rng.randint(1, 70)) for i in range(60)]
    batches = list(length_batches(items, lambda i: len(i.ids), budget=256, overhead=64, bucket=BUCKET))
    widths = sorted(round_up(len(i.ids), BUCKET) for i in items)
    expected = plan_batches(widths, max_rows=lambda w: 256 // w, overhead=64)
    assert [len(b) for b in batches] == expected
    for batch in batches:  # within the budget at the bucketed width
        assert len(batch) == 1 or len(batch) * round_up(max(len(i.ids) for i in batch), BUCKET) <= 256
    assert round_up(1, 16) == 16 and round_up(16, 16) == 16 and round_up(17, 16) == 32 and round_up(7, 1) == 7


# ---------------------------------------------------------------------------- compiled values


def test_compiled_values_match_eager_one_graph_for_every_batch(tiny, aot_eager):
    gpt2, tok = tiny
    from torch._dynamo.utils import counters

    # The first window is one batch of 16 rows of 16 tokens (equal sizes must still trace as two
    # symbols), then several widths and row counts; the last window's one-row batch runs eagerly.
    # "the" is one token. Then a window of 16 equal rows of 32 tokens: a batch without padding is
    # padded one bucket more, so it has a mask like the others (transformers drops an all-ones mask).
    data = (
        [" ".join(["the"] * 16)] * 15 + ["the the"] + texts(2, 32) + [" ".join(["the"] * 32)] * 16 + ["cat"]
    )
    eager = Scorer(gpt2, tok, batch_size=16, window=16, compile="off").score_texts(data)
    counters.clear()
    scorer = Scorer(gpt2, tok, batch_size=16, window=16, compile="on", per_token=True)
    results = list(scorer.score(Record(line=i + 1, text=t) for i, t in enumerate(data)))
    torch.testing.assert_close(
        torch.tensor([r["value"] for r in results]), torch.tensor(eager), atol=1e-5, rtol=0
    )
    assert all(len(r["values"]) == len(tok(t)["input_ids"]) for r, t in zip(results, data, strict=True))
    assert len(aot_eager) == 1 and aot_eager[0]["dynamic"] is True
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every layer and batch shape
    assert scorer.compiled and all(b._compiled_call_impl is None for b in gpt2.pretrained_model.transformer.h)


def test_compiled_llama_and_prefix_sharing_stay_exact(aot_eager):
    tok = tiny_tokenizer()
    model = wrap("llama")
    rng = random.Random(3)
    prompts = texts(2, 4, high=20)
    records = [Record(line=0, text=t) for t in texts(4, 10)]
    records += [Record(line=0, prompt=p, response=" " + rng.choice(WORDS)) for p in prompts for _ in range(3)]
    for index, record in enumerate(records, start=1):
        record.line = index
    eager = [r["value"] for r in Scorer(model, tok, batch_size=4, compile="off").score(records)]
    compiled = [r["value"] for r in Scorer(model, tok, batch_size=4, compile="on").score(records)]
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- failures


def _raising_compile(*args, **kwargs):
    raise RuntimeError("no C++ compiler\nsecond line")


def test_a_failed_compile_warns_once_and_scores_eagerly(tiny, monkeypatch, caplog):
    gpt2, tok = tiny
    data = texts(7, 40)
    eager = Scorer(gpt2, tok, batch_size=4, window=8, compile="off").score_texts(data)
    monkeypatch.setattr(torch, "compile", _raising_compile)
    with caplog.at_level(logging.WARNING, logger="vhctl"):
        got = Scorer(gpt2, tok, batch_size=4, window=8, compile="on").score_texts(data)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(eager), atol=1e-5, rtol=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "could not compile" in warnings[0] and "\n" not in warnings[0]


def test_a_failure_in_the_compiled_call_falls_back_too(tiny, monkeypatch, caplog):
    gpt2, tok = tiny

    def broken(function, **kwargs):
        def call(*args):
            raise RuntimeError("InductorError: lowering failed")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="vhctl"):
        got = Scorer(gpt2, tok, batch_size=4, compile="on").score_texts(texts(8, 12))
    assert len(got) == 12 and len([r for r in caplog.records if r.name == "vhctl"]) == 1


def test_a_model_error_is_not_taken_for_a_compile_failure(monkeypatch, caplog):
    calls = []
    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]))

    def forward(x):
        calls.append(x)
        raise ValueError("bad token id")

    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: function)
    blocks = CompiledBlocks([model], "the model's layers")
    assert blocks.usable and len(blocks.blocks) == 2
    with caplog.at_level(logging.WARNING, logger="vhctl"), pytest.raises(ValueError, match="bad token id"):
        blocks(forward, 1)
    assert not blocks.failed and not caplog.records and calls == [1, 1]
    assert all(block._compiled_call_impl is None for block in blocks.blocks)  # the model is left as it was


def test_scoring_wraps_the_model_error(tiny, monkeypatch):
    gpt2, tok = tiny
    from vhctl.scoring import forwards

    def boom(self, ids, mask):
        raise IndexError("index out of range in self")

    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: function)
    monkeypatch.setattr(forwards.Forwards, "_backbone_hidden", boom)
    with pytest.raises(ModelError):
        Scorer(gpt2, tok, batch_size=4, compile="on").score_texts(texts(9, 6))


def test_a_compile_that_fails_at_one_shape_keeps_the_others_compiled(monkeypatch, caplog):
    """A shape whose compiled call fails runs eagerly (one warning for all); other shapes stay compiled,
    and after MAX_FAILED_SHAPES failed shapes the blocks stop trying."""
    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]))
    compiled_calls = []

    def fake_compile(function, **kwargs):
        def call(block, x):
            if x.shape[0] == 3:
                raise RuntimeError("InductorError: this shape does not lower")
            compiled_calls.append(x.shape)
            return function(block, x)

        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    blocks = CompiledBlocks([model], "the model's layers")

    def forward(x):
        for block in model[0]:
            x = block(x)
        return x

    with caplog.at_level(logging.WARNING, logger="vhctl"):
        for rows in (2, 3, 2, 3, 4):
            assert blocks(forward, torch.ones(rows, 2)).shape == (rows, 2)
    assert [s[0] for s in compiled_calls] == [2, 2, 2, 2, 4, 4]  # shape 3 ran eagerly, the others compiled
    assert blocks.failed_shapes == {((3, 2),)} and not blocks.failed
    assert len([r for r in caplog.records if r.name == "vhctl"]) == 1
    for rows in range(5, 5 + compiled_mod.MAX_FAILED_SHAPES):
        monkeypatch.setattr(
            torch, "compile", lambda function, **kw: lambda b, x: (_ for _ in ()).throw(RuntimeError("no"))
        )
        blocks._compiled = None
        blocks(forward, torch.ones(rows, 2))
    assert blocks.failed
