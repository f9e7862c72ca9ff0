"""Families trained today (issue #13): wrap, make-ref, validate, and score equal to TRL's plain forward.

Each family of ``tiny_models.FAMILIES`` (dense, mixture-of-experts, local attention windows, Mamba
and linear-attention layers) is a tiny random model with the tiny tokenizer. ``vhctl score`` must
give, with and without prefix sharing, the value TRL computes: the whole model run on a right-padded
batch with ``output_hidden_states=True``, the value head on the last hidden state at the last real
token. A family whose cache cannot be shared (a recurrent or convolution state) is scored the plain
way, decided before any forward: no prompt forward with a cache, no shared prompts in the stats.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.tiny_models import FAMILIES, TINY_VOCAB, TOKEN_ID, save_tiny_model, tiny_tokenizer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from vhctl import AutoModelForCausalLMWithValueHead
from vhctl.cli.app import app
from vhctl.constants import V_HEAD_BIAS, V_HEAD_WEIGHT, VALUE_HEAD_NAME
from vhctl.io.records import iter_records
from vhctl.scoring import Scorer

# Float noise between the scorer's batches and one padded forward is ~1e-7 in float32.
ATOL = 1e-5
WORDS = "the quick brown fox jumps over a lazy dog while critics value heads and rewards score tokens".split()
SHARED_NOTE = "saved by prefix sharing"
runner = CliRunner()


def _family(name: str) -> Any:
    family = FAMILIES[name]
    if not family.available:
        pytest.skip(f"transformers here has no {family.config_class}")
    return family


def _cli(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def _mixed_lines() -> list[dict[str, str]]:
    """Plain texts of different lengths and two best-of-n groups (prompts of different lengths), shuffled."""
    rng = random.Random(13)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    lines: list[dict[str, str]] = [{"text": words(1, 24)} for _ in range(6)]
    for size, (low, high) in ((4, (9, 12)), (2, (3, 4))):
        prompt = words(low, high)
        lines += [{"prompt": prompt, "response": " " + words(1, 6)} for _ in range(size)]
    rng.shuffle(lines)
    return lines


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "mixed.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in _mixed_lines()), encoding="utf-8")
    return path


def _token_ids(line: dict[str, str]) -> list[int]:
    tokenizer = tiny_tokenizer()
    if "text" in line:
        return tokenizer(line["text"])["input_ids"]
    # The tiny tokenizer adds no special tokens: a prompt + response is the two encodings end to end.
    assert tokenizer("a")["input_ids"] == tokenizer("a", add_special_tokens=False)["input_ids"]
    return (
        tokenizer(line["prompt"], add_special_tokens=False)["input_ids"]
        + tokenizer(line["response"], add_special_tokens=False)["input_ids"]
    )


def _trl_values(source: Path, checkpoint: Path, lines: list[dict[str, str]]) -> list[float]:
    """TRL's value of each line: one right-padded batch through the whole model, head on hidden_states[-1]."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    head = load_file(checkpoint / VALUE_HEAD_NAME)
    rows = [_token_ids(line) for line in lines]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), TOKEN_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    last = hidden[torch.arange(len(rows)), mask.sum(1) - 1]
    return (last @ head[V_HEAD_WEIGHT].T + head[V_HEAD_BIAS]).squeeze(-1).tolist()


def _scored(result: Any) -> list[float]:
    return [json.loads(line)["value"] for line in result.stdout.splitlines()]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_wraps_refs_validates_and_scores_like_trl(name: str, tmp_path: Path, mixed_file: Path) -> None:
    family = _family(name)
    source = save_tiny_model(name, tmp_path / "source")
    checkpoint = tmp_path / "ck"
    _cli("wrap", str(source), "--out", str(checkpoint), "--init", "normal", "--seed", "0")
    ref = json.loads(_cli("make-ref", str(checkpoint), "--shared", "1", "--json").stdout)
    assert ref["num_shared_layers"] == 1 and ref["shared_tensors"] > 0
    report = json.loads(_cli("validate", str(checkpoint), "--deep", "--json").stdout)
    assert report["ok"] is True and report["problems"] == [], report

    lines = [json.loads(line) for line in mixed_file.read_text().splitlines()]
    expected = _trl_values(source, checkpoint, lines)
    shared = _cli("score", str(checkpoint), "-i", str(mixed_file), "--batch-size", "3")
    plain = _cli("score", str(checkpoint), "-i", str(mixed_file), "--batch-size", "3", "--no-prefix-sharing")
    for result in (shared, plain):
        values = _scored(result)
        assert len(values) == len(lines)
        gaps = [abs(value - want) for value, want in zip(values, expected, strict=True)]
        assert max(gaps) <= ATOL, (name, gaps)
    assert (SHARED_NOTE in shared.stderr) is family.shares_prefix, shared.stderr
    assert SHARED_NOTE not in plain.stderr


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cache_decision_is_made_before_any_forward(name: str, mixed_file: Path) -> None:
    """The scorer asks for a prompt cache only where the cache can be shared; no fallback afterwards."""
    from vhctl.modeling.cache import prefix_sharing_supported

    family = _family(name)
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        AutoModelForCausalLM.from_config(family.config()), v_head_init_strategy="normal"
    ).eval()
    supported, reason = prefix_sharing_supported(model)
    assert supported is family.shares_prefix, reason
    assert bool(reason) is not supported  # a reason exactly when it is refused

    cached_calls: list[bool] = []
    for module in model.pretrained_model.modules():  # the backbone or, without one, the full model
        if type(module).__name__.endswith(("Model", "ForCausalLM")):
            module.register_forward_pre_hook(
                lambda _m, _args, kwargs: cached_calls.append(bool(kwargs.get("use_cache"))), with_kwargs=True
            )
    scorer = Scorer(model, tiny_tokenizer(), batch_size=3)
    with mixed_file.open("rb") as stream:
        results = list(scorer.score(iter_records(stream)))
    assert len(results) == len(_mixed_lines()) and cached_calls
    if family.shares_prefix:
        assert scorer.stats.shared_prompts == 4 and any(cached_calls)
    else:
        assert scorer.stats.shared_prompts == 0 and not any(cached_calls), cached_calls


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_models_are_tiny(name: str) -> None:
    config = _family(name).config().get_text_config()
    assert config.vocab_size == TINY_VOCAB and config.num_hidden_layers <= 4 and config.hidden_size <= 64
    torch.manual_seed(0)
    assert sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()) < 200_000


def test_kinds_cover_dense_moe_sliding_and_state_layers() -> None:
    kinds = {kind for family in FAMILIES.values() for kind in family.kinds}
    assert {"dense", "moe", "sliding", "ssm", "linear"} <= kinds
    assert len(FAMILIES) >= 10
    assert any(f.shares_prefix for f in FAMILIES.values()) and not all(
        f.shares_prefix for f in FAMILIES.values()
    )


def test_falcon_h1_best_of_n_file_scores_with_prefix_sharing_on(tmp_path: Path) -> None:
    """The reported crash: a hybrid Mamba/attention model on one prompt with several responses."""
    _family("falcon_h1")
    source = save_tiny_model("falcon_h1", tmp_path / "source")
    checkpoint = tmp_path / "ck"
    _cli("wrap", str(source), "--out", str(checkpoint))
    best_of_n = tmp_path / "bon.jsonl"
    responses = ["yes indeed", "no", "maybe later today", "it depends on the question"]
    best_of_n.write_text(
        "".join(json.dumps({"prompt": "What is the answer to this question?", "response": " " + r}) + "\n"
                for r in responses)
    )  # fmt: skip
    result = runner.invoke(app, ["score", str(checkpoint), "-i", str(best_of_n)])
    assert result.exit_code == 0 and result.exception is None, result.output
    plain = _cli("score", str(checkpoint), "-i", str(best_of_n), "--no-prefix-sharing")
    assert len(_scored(result)) == len(responses)
    assert max(abs(a - b) for a, b in zip(_scored(result), _scored(plain), strict=True)) <= ATOL


# ---------------------------------------------------------------------------- the cache rules one by one


class OwnCache:  # a model module that defines its own cache class (as MiniMax does)
    pass


class ModelWithOwnCache:
    """Stands for a model whose modeling module brings a cache class of its own."""

    def __init__(self, config: Any) -> None:
        self.config = config


def test_each_rule_refuses_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.tiny_models import make_tiny_model

    from vhctl.modeling.cache import prefix_sharing_supported

    _family("falcon_h1")
    falcon = make_tiny_model("falcon_h1")
    # Without transformers' "stateful" mark, the planned cache layers still give it away.
    for cls in type(falcon).__mro__:
        if "_is_stateful" in vars(cls):
            monkeypatch.setattr(cls, "_is_stateful", False)
    ok, reason = prefix_sharing_supported(falcon)
    assert not ok and "LinearAttentionAndFullAttentionLayer" in reason

    llama = make_tiny_model("llama")
    assert prefix_sharing_supported(llama) == (True, "")
    ok, reason = prefix_sharing_supported(ModelWithOwnCache(llama.config))
    assert not ok and "OwnCache" in reason

    monkeypatch.setattr(
        llama.config, "layer_types", ["full_attention", "a_layer_kind_from_the_future"], raising=False
    )
    ok, reason = prefix_sharing_supported(llama)
    assert not ok and "unknown" in reason


def test_cache_rows_selectable_takes_only_key_value_layers() -> None:
    from transformers.cache_utils import (
        Cache,
        DynamicLayer,
        DynamicSlidingWindowLayer,
        LinearAttentionAndFullAttentionLayer,
    )

    from vhctl.modeling.cache import cache_rows_selectable

    assert cache_rows_selectable(Cache(layers=[DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4)]))
    assert not cache_rows_selectable(Cache(layers=[DynamicLayer(), LinearAttentionAndFullAttentionLayer()]))
    assert not cache_rows_selectable(Cache(layers=[]))
    assert not cache_rows_selectable(None)
