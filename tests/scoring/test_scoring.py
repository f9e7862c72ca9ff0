"""Scorer: equal to the plain forward (sorted batches, shared prompts), order, streaming, errors, rewards."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import pytest
import torch
from helpers.tiny_models import (
    CAUSAL_ARCHS,
    local_window_value_model,
    make_reward_adapter,
    make_tiny_model,
    save_tiny_model,
    tiny_lora_config,
    tiny_tokenizer,
)
from helpers.tiny_models import wrapped_tiny as wrap
from tokenizers.processors import TemplateProcessing

from vhctl import AutoModelForCausalLMWithValueHead
from vhctl.errors import InputError, UsageError
from vhctl.io.records import Record, iter_records
from vhctl.scoring import Scorer, resolve_device, resolve_dtype

WORDS = "the quick brown fox jumps over a lazy dog while critics value heads and rewards score tokens".split()
EOT = 0  # the tiny tokenizer's <|endoftext|>
# Scorer vs the plain forward in float32 (README: ~1e-6). Measured: at most 1.4e-6 over the 12 causal
# families of TRL (batched, sorted, prompt sharing, per token), at most 4.8e-7 in every other test here.
PLAIN_TOL = 1e-5


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def with_post_processor(tokenizer, single: str):
    """The tiny tokenizer, made to add <|endoftext|> around a text like Llama (bos) or T5 (eos) do."""
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=single, special_tokens=[("<|endoftext|>", EOT)]
    )
    return tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def gpt2():
    return wrap("gpt2")


def plain_values(model, ids: list[int]) -> torch.Tensor:
    """The wrapper's own forward on one unpadded sequence: the reference every path must match."""
    with torch.no_grad():
        _, _, value = model(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return value[0]


def expected_ids(tokenizer, record: Record) -> list[int]:
    if record.text is not None:
        return tokenizer(record.text)["input_ids"]
    plain = tokenizer(record.prompt + "|", add_special_tokens=True)["input_ids"]  # find what wraps a text
    core = tokenizer(record.prompt + "|", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(plain)) if plain[i : i + len(core)] == core)
    prompt = tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
    response = tokenizer(record.response, add_special_tokens=False)["input_ids"]
    return plain[:start] + prompt + response + plain[start + len(core) :]


def mixed_records(seed: int, n_text: int = 12, n_prompts: int = 6) -> list[Record]:
    """Texts of varied length and prompt groups of sizes 1, 2, 3, 5..., shuffled (repeats non-consecutive)."""
    rng = random.Random(seed)
    records = [Record(line=0, text=words(rng, 1, 30)) for _ in range(n_text)]
    sizes = [1, 2, 3, 5, 2, 4]
    for g in range(n_prompts):
        prompt = words(rng, 1, 14)
        records += [
            Record(line=0, prompt=prompt, response=" " + words(rng, 1, 9)) for _ in range(sizes[g % 6])
        ]
    rng.shuffle(records)
    for index, record in enumerate(records, start=1):
        record.line, record.id, record.has_id = index, f"r{index}", True
    return records


def check_against_plain(model, tokenizer, records, results, atol: float) -> None:
    assert [r["id"] for r in results] == [rec.id for rec in records]  # input order
    for record, result in zip(records, results, strict=True):
        reference = plain_values(model, expected_ids(tokenizer, record))
        assert abs(result["value"] - reference[-1].item()) <= atol, record
        if "values" in result:
            assert len(result["values"]) == len(reference)
            torch.testing.assert_close(torch.tensor(result["values"]), reference, atol=atol, rtol=0)
            assert result["values"][-1] == result["value"]


# ---------------------------------------------------------------------------- equality with the plain path


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_every_causal_arch_matches_the_plain_forward(arch, tok):
    model = wrap(arch)
    records = mixed_records(seed=1)
    scorer = Scorer(model, tok, batch_size=3, window=16, per_token=True)
    results = list(scorer.score(records))
    check_against_plain(model, tok, records, results, atol=PLAIN_TOL)
    assert scorer.stats.records == len(records) and scorer.stats.errors == 0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sorted_batches_match_the_padded_forward(arch, tok):
    """The TRL way (batch of 16, right padding, full model) gives the same values within 1e-5."""
    model = wrap(arch)
    rng = random.Random(2)
    texts = [words(rng, 1, 40) for _ in range(21)]
    scorer = Scorer(model, tok, batch_size=4, window=8, prefix_sharing=False)
    ours = [r["value"] for r in scorer.score(Record(line=i + 1, text=t) for i, t in enumerate(texts))]
    reference = []
    for start in range(0, len(texts), 16):
        batch = tok(texts[start : start + 16], padding=True, return_tensors="pt")
        with torch.no_grad():
            _, _, values = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        last = batch["attention_mask"].sum(1) - 1
        reference += values[torch.arange(len(last)), last].tolist()
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(reference), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prefix_sharing_matches_and_saves_work(arch, tok):
    model = wrap(arch)
    records = mixed_records(seed=3, n_text=4, n_prompts=12)
    shared = Scorer(model, tok, batch_size=4, per_token=True)
    results = list(shared.score(records))
    check_against_plain(model, tok, records, results, atol=PLAIN_TOL)
    groups = {}
    for record in records:
        if record.prompt is not None:
            groups.setdefault(record.prompt, []).append(record)
    saved = sum(len(g) - 1 for g in groups.values())
    assert shared.stats.shared_prompts == saved > 0
    unshared = Scorer(model, tok, batch_size=4, per_token=True, prefix_sharing=False)
    plain_results = list(unshared.score(records))
    assert unshared.stats.shared_prompts == 0
    for a, b in zip(results, plain_results, strict=True):
        assert abs(a["value"] - b["value"]) <= PLAIN_TOL


def test_prefix_sharing_one_prompt_per_forward(tok, gpt2, monkeypatch):
    """Models without position_ids run each prompt alone (cache length gives the positions)."""
    records = mixed_records(seed=4, n_text=2, n_prompts=8)
    scorer = Scorer(gpt2, tok, batch_size=4)
    monkeypatch.setattr(scorer, "_takes_positions", False)
    check_against_plain(gpt2, tok, records, list(scorer.score(records)), atol=PLAIN_TOL)
    assert scorer.stats.shared_prompts > 0


def test_groups_split_across_windows_stay_right(tok, gpt2):
    prompt = "a shared prompt that is long enough"
    records = [
        Record(line=i + 1, prompt=prompt, response=f" answer {i}", id=i, has_id=True) for i in range(11)
    ]
    results = list(Scorer(gpt2, tok, batch_size=2, window=4).score(records))
    check_against_plain(gpt2, tok, records, results, atol=PLAIN_TOL)


def test_local_attention_that_counts_padding_is_caught(tok, monkeypatch):
    """A local window the scorer does not know about: the first-use check falls back, values stay right."""
    import vhctl.scoring.model_parts as scoring

    model = local_window_value_model()
    monkeypatch.setattr(scoring, "_sliding_window", lambda config: None)
    rng = random.Random(5)
    records = []
    for prompt in ("short", words(rng, 8, 10), words(rng, 9, 12)):
        records += [Record(line=0, prompt=prompt, response=" " + words(rng, 3, 6)) for _ in range(3)]
    for index, record in enumerate(records, start=1):
        record.line, record.id, record.has_id = index, index, True
    scorer = Scorer(model, tok, batch_size=8)
    check_against_plain(model, tok, records, list(scorer.score(records)), atol=PLAIN_TOL)
    assert scorer._multi_prompt is False


def test_backbone_only_no_lm_head(tok, gpt2):
    calls = []
    handle = gpt2.pretrained_model.lm_head.register_forward_hook(lambda *args: calls.append(1))
    try:
        list(Scorer(gpt2, tok).score(mixed_records(seed=6)))
    finally:
        handle.remove()
    assert calls == []


def test_fused_gelu_is_restored_and_matches(tok, gpt2):
    records = mixed_records(seed=7)
    fused = [r["value"] for r in Scorer(gpt2, tok).score(records)]
    unfused = [r["value"] for r in Scorer(gpt2, tok, fuse_activations=False).score(records)]
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(unfused), atol=1e-5, rtol=0)
    assert not any("forward" in vars(m) for m in gpt2.modules())


def test_trl_wrapper_is_accepted(tok):
    from trl.experimental.ppo.modeling_value_head import AutoModelForCausalLMWithValueHead as TrlWrapper

    model = TrlWrapper.from_pretrained(make_tiny_model("gpt2")).eval()
    records = mixed_records(seed=8)
    check_against_plain(
        model, tok, records, list(Scorer(model, tok, per_token=True).score(records)), atol=PLAIN_TOL
    )


# ---------------------------------------------------------------------------- tokenization rules


def test_special_tokens_go_around_prompt_plus_response(tok):
    bos = with_post_processor(tiny_tokenizer(), "<|endoftext|> $A")
    eos = with_post_processor(tiny_tokenizer(), "$A <|endoftext|>")
    record = Record(line=1, prompt="the fox", response=" jumps")
    prompt = tok("the fox", add_special_tokens=False)["input_ids"]
    response = tok(" jumps", add_special_tokens=False)["input_ids"]
    model = wrap("llama")
    for tokenizer, ids in ((bos, [EOT, *prompt, *response]), (eos, [*prompt, *response, EOT])):
        (result,) = Scorer(model, tokenizer, per_token=True).score([record])
        torch.testing.assert_close(
            torch.tensor(result["values"]), plain_values(model, ids), atol=1e-5, rtol=0
        )


def test_shared_prefix_includes_bos(tok):
    bos = with_post_processor(tiny_tokenizer(), "<|endoftext|> $A")
    model = wrap("llama")
    records = [Record(line=i + 1, prompt="the fox", response=f" jumps {i}") for i in range(3)]
    scorer = Scorer(model, bos, per_token=True)
    results = list(scorer.score(records))
    prompt_tokens = 1 + len(tok("the fox", add_special_tokens=False)["input_ids"])  # bos + prompt
    assert scorer.stats.shared_prompts == 2 and scorer.stats.shared_tokens == 2 * prompt_tokens
    for record, result in zip(records, results, strict=True):
        ids = [EOT, *tok(record.prompt, add_special_tokens=False)["input_ids"]]
        ids += tok(record.response, add_special_tokens=False)["input_ids"]
        assert abs(result["value"] - plain_values(model, ids)[-1].item()) <= PLAIN_TOL


def test_chat_messages_use_the_template(tok, gpt2):
    messages = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello fox"}]
    (result,) = Scorer(gpt2, tok).score([Record(line=1, messages=messages)])
    ids = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert abs(result["value"] - plain_values(gpt2, ids)[-1].item()) < 1e-5


def test_chat_without_template_names_the_line(tok, gpt2):
    plain = tiny_tokenizer()
    plain.chat_template = None
    records = [Record(line=1, text="fine"), Record(line=7, messages=[{"role": "user", "content": "x"}])]
    got = []
    with pytest.raises(InputError) as info:
        for result in Scorer(gpt2, plain).score(records):
            got.append(result)
    assert info.value.line == 7 and "chat template" in str(info.value)
    assert len(got) == 1 and "value" in got[0]  # the line before was still scored


def test_truncation_keeps_the_end_and_is_counted(tok, gpt2):
    long_text = " ".join(WORDS * 2)
    records = [Record(line=1, text=long_text), Record(line=2, text="short"),
               Record(line=3, prompt=long_text, response=" the end"), Record(line=4, prompt=long_text, response=" a")]  # fmt: skip
    scorer = Scorer(gpt2, tok, max_length=10, per_token=True)
    results = list(scorer.score(records))
    assert scorer.stats.truncated == 3
    full = tok(long_text)["input_ids"]
    torch.testing.assert_close(
        torch.tensor(results[0]["values"]), plain_values(gpt2, full[-10:]), atol=1e-5, rtol=0
    )
    for record, result in zip(records[2:], results[2:], strict=True):
        assert len(result["values"]) == 10
        ids = expected_ids(tok, record)[-10:]
        assert abs(result["value"] - plain_values(gpt2, ids)[-1].item()) <= PLAIN_TOL
    assert len(results[1]["values"]) == len(tok("short")["input_ids"])


def test_default_max_length_is_the_model_limit(tok, gpt2):
    limit = gpt2.pretrained_model.config.n_positions
    scorer = Scorer(gpt2, tok)
    assert scorer.max_length == limit
    (result,) = scorer.score([Record(line=1, text=" ".join(WORDS * 40))])
    assert scorer.stats.truncated == 1 and isinstance(result["value"], float)
    with pytest.raises(UsageError, match="limit"):
        Scorer(gpt2, tok, max_length=limit + 1)


def test_empty_text_is_an_error_unless_the_tokenizer_adds_tokens(tok, gpt2):
    records = list(iter_records(io.BytesIO(b'{"id": 1, "text": ""}\n')))
    with pytest.raises(InputError, match="line 1: nothing to score"):
        list(Scorer(gpt2, tok).score(records))
    (error,) = Scorer(gpt2, tok, skip_bad=True).score(records)
    assert error == {"line": 1, "id": 1, "error": error["error"]} and "nothing to score" in error["error"]
    bos = with_post_processor(tiny_tokenizer(), "<|endoftext|> $A")
    (result,) = Scorer(gpt2, bos).score(records)
    assert abs(result["value"] - plain_values(gpt2, [EOT])[-1].item()) < 1e-5


# ---------------------------------------------------------------------------- streaming, order, errors


def test_results_stream_and_memory_stays_bounded(tok, gpt2):
    consumed = 0
    lag = []

    def lines() -> Iterator[bytes]:
        nonlocal consumed
        for i in range(200):
            consumed += 1
            yield f'{{"id": {i}, "text": "line {i} {WORDS[i % len(WORDS)]}"}}\n'.encode()

    produced = 0
    for result in Scorer(gpt2, tok, batch_size=4, window=16).score(iter_records(lines())):
        assert result["id"] == produced
        produced += 1
        lag.append(consumed - produced)
        if produced == 1:
            assert consumed < 200  # the first result came before the input ended
    assert produced == 200 and max(lag) < 16  # never more than a window read ahead


def test_bad_line_stops_after_scoring_the_lines_before(tok, gpt2):
    data = b"one\ntwo\n\nthree\n{bad json\nfive\n"
    got = []
    with pytest.raises(InputError) as info:
        for result in Scorer(gpt2, tok, window=100).score(iter_records(io.BytesIO(data))):
            got.append(result)
    assert info.value.line == 5 and len(got) == 3


def test_skip_bad_gives_error_records_in_place(tok, gpt2):
    data = b'{"id": "a", "text": "one"}\n{"id": "b", "txt": "two"}\n\xff\xfe\n{"id": "d", "prompt": "p", "response": "r"}\n'
    scorer = Scorer(gpt2, tok, skip_bad=True)
    results = list(scorer.score(iter_records(io.BytesIO(data), skip_bad=True)))
    assert [sorted(r) for r in results] == [
        ["id", "value"],
        ["error", "id", "line"],
        ["error", "line"],
        ["id", "value"],
    ]
    assert results[1]["line"] == 2 and results[1]["id"] == "b" and results[2]["line"] == 3
    assert scorer.stats.errors == 2 and scorer.stats.records == 2


def test_ids_of_any_type_come_back_unchanged(tok, gpt2):
    data = (
        b'{"id": 3, "text": "a"}\n{"id": null, "text": "b"}\n{"id": {"k": [1]}, "text": "c"}\n{"text": "d"}\n'
    )
    results = list(Scorer(gpt2, tok).score(iter_records(io.BytesIO(data))))
    assert [r.get("id", "absent") for r in results] == [3, None, {"k": [1]}, "absent"]
    assert "id" in results[1] and "id" not in results[3]


def test_empty_input_gives_no_output(tok, gpt2):
    scorer = Scorer(gpt2, tok)
    assert list(scorer.score(iter_records(io.BytesIO(b"")))) == []
    assert scorer.stats.records == 0


def test_token_budget_batches(tok, gpt2):
    records = mixed_records(seed=9)
    results = list(Scorer(gpt2, tok, batch_size=16, max_batch_tokens=24).score(records))
    check_against_plain(gpt2, tok, records, results, atol=PLAIN_TOL)


def test_short_sequences_share_the_token_budget_of_the_longest(tok, gpt2, monkeypatch):
    """batch_size counts the longest sequences; shorter ones are packed up to the same token count."""
    records = [Record(line=1, text=" ".join(WORDS * 2), id=0, has_id=True)]
    records += [Record(line=i + 2, text=WORDS[i % len(WORDS)], id=i + 1, has_id=True) for i in range(30)]
    seen = []
    original = Scorer._forward_plain

    def spy(self, batch, per_token):
        seen.append((len(batch), max(len(item.ids) for item in batch)))
        return original(self, batch, per_token)

    monkeypatch.setattr(Scorer, "_forward_plain", spy)
    scorer = Scorer(gpt2, tok, batch_size=2)
    results = list(scorer.score(records))
    check_against_plain(gpt2, tok, records, results, atol=PLAIN_TOL)
    budget = 2 * len(tok(records[0].text)["input_ids"])
    assert all(rows * width <= budget for rows, width in seen)
    assert max(rows for rows, _ in seen) > 2


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_length": 0}, {"max_batch_tokens": 0}])
def test_bad_sizes_are_usage_errors(tok, gpt2, kwargs):
    with pytest.raises(UsageError):
        Scorer(gpt2, tok, **kwargs)


# ---------------------------------------------------------------------------- seq2seq


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_seq2seq_scores_the_decoder(arch, tok):
    model = wrap(arch)
    start = model.pretrained_model.config.decoder_start_token_id
    records = [
        Record(line=1, text="the quick fox"),
        Record(line=2, prompt="translate the dog", response=" a lazy dog"),
        Record(line=3, prompt="translate the dog", response=" a dog jumps over the fox"),
    ]
    results = list(Scorer(model, tok, batch_size=2, per_token=True).score(records))
    for record, result in zip(records, results, strict=True):
        source = tok(record.text or record.prompt)["input_ids"]
        decoder = [start, *(tok(record.response)["input_ids"] if record.response else [])]
        with torch.no_grad():
            _, _, values = model(torch.tensor([source]), decoder_input_ids=torch.tensor([decoder]))
        torch.testing.assert_close(torch.tensor(result["values"]), values[0], atol=1e-5, rtol=0)
        assert result["value"] == result["values"][-1] and len(result["values"]) == len(decoder)


# ---------------------------------------------------------------------------- rewards


@pytest.fixture(scope="module")
def rewarded(tmp_path_factory):
    """A PEFT policy (TRL style) with a reward adapter, and the adapter's own seq-cls model."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("reward")
    base = save_tiny_model("gpt2", root / "base")
    adapter = make_reward_adapter("gpt2", root / "rm", base, seed=1)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(base), peft_config=tiny_lora_config("gpt2"), reward_adapter=str(adapter), reward_adapter_name="rm"
    ).eval()
    seq_cls = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    reference = PeftModel.from_pretrained(seq_cls, str(adapter)).eval()
    return model, reference


def test_reward_matches_the_adapter_model(tok, rewarded):
    model, reference = rewarded
    records = mixed_records(seed=10)
    scorer = Scorer(model, tok, reward=True, batch_size=3)
    results = list(scorer.score(records))
    check_against_plain(model, tok, records, results, atol=PLAIN_TOL)  # values still come from the policy
    for record, result in zip(records, results, strict=True):
        ids = torch.tensor([expected_ids(tok, record)])
        with torch.no_grad():
            expected = reference(ids).logits[0, 0].item()
        assert abs(result["reward"] - expected) <= PLAIN_TOL
    assert model.pretrained_model.active_adapter == "default"  # switched back to the policy
    named = list(Scorer(model, tok, reward="rm").score(records[:2]))
    assert [r["reward"] for r in named] == pytest.approx([r["reward"] for r in results[:2]], abs=1e-5)


def test_reward_errors(tok, gpt2, rewarded):
    with pytest.raises(UsageError, match="no reward adapter"):
        Scorer(gpt2, tok, reward=True)
    with pytest.raises(UsageError, match="'other'"):
        Scorer(rewarded[0], tok, reward="other")


def test_reward_adapter_on_a_plain_policy(tok, tmp_path):
    """A checkpoint without a policy adapter: values from the base model, reward from the adapter."""
    from peft import PeftModel

    base = save_tiny_model("gpt2", tmp_path / "base")
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", base, seed=2)
    plain = AutoModelForCausalLMWithValueHead.from_pretrained(str(base), v_head_init_strategy="normal").eval()
    peft_model = PeftModel.from_pretrained(plain.pretrained_model, str(adapter), adapter_name="rm")
    rewarded = AutoModelForCausalLMWithValueHead(
        peft_model,
        score_module=torch.nn.Linear(32, 1, bias=False),
        supports_rm_adapter=True,
        rm_adapter_name="rm",
    )
    rewarded.v_head.load_state_dict(plain.v_head.state_dict())
    records = mixed_records(seed=11, n_text=4, n_prompts=3)
    results = list(Scorer(rewarded, tok, reward=True).score(records))
    with peft_model.disable_adapter():
        check_against_plain(rewarded, tok, records, results, atol=PLAIN_TOL)
    assert all(isinstance(r["reward"], float) for r in results)


# ---------------------------------------------------------------------------- device and dtype


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "cuda:99"):
        if bad == "cuda:99" and not torch.cuda.is_available():
            continue
        with pytest.raises(UsageError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16 and resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(UsageError, match="float32"):
        resolve_dtype("float8", cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cuda_scoring_matches_cpu(arch, tok):
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    cpu_model = wrap(arch)
    records = mixed_records(seed=12)
    expected = [r["value"] for r in Scorer(cpu_model, tok, per_token=True).score(records)]
    gpu_fp32 = wrap(arch).to(device)
    got32 = [r["value"] for r in Scorer(gpu_fp32, tok, per_token=True).score(records)]
    torch.testing.assert_close(torch.tensor(got32), torch.tensor(expected), atol=1e-3, rtol=0)
    gpu_half = wrap(arch)
    gpu_half.pretrained_model.to(device=device, dtype=dtype)
    gpu_half.v_head.to(device)
    got = [r["value"] for r in Scorer(gpu_half, tok, per_token=True).score(records)]
    scale = max(abs(v) for v in expected) + 1.0
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=0.1 * scale, rtol=0)
