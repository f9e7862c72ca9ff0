"""The reference every scoring path is checked against: a plain transformers forward of the same weights.

One record at a time, unpadded, float32: the backbone's last hidden state (``output_hidden_states``),
the value head on it, the value at the last token (and every token for per-token values). The
token ids are made here from the tokenizer alone, as ``vhctl score`` documents them, so a fast path
that tokenises or truncates wrongly is caught too. Rewards: the same forward with the PEFT reward
adapter enabled, its ``score`` head on the last hidden state.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from vhctl.io.records import Record

WORDS = "the quick brown fox jumps over a lazy dog while critics value heads and rewards score tokens".split()


def expected_ids(tokenizer: Any, record: Record, limit: int | None) -> list[int]:
    """The token ids ``vhctl score`` documents for ``record``, cut to their last ``limit``."""
    if record.messages is not None:
        rendered = tokenizer.apply_chat_template(record.messages, tokenize=False)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    elif record.text is not None:
        ids = tokenizer(record.text)["input_ids"]
    else:
        plain = tokenizer(record.prompt + "|", add_special_tokens=True)["input_ids"]
        core = tokenizer(record.prompt + "|", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(plain)) if plain[i : i + len(core)] == core)
        prompt = tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
        response = tokenizer(record.response or "", add_special_tokens=False)["input_ids"]
        ids = plain[:start] + prompt + response + plain[start + len(core) :]
    return list(ids[-limit:] if limit is not None else ids)


def hard_records(tokenizer: Any, limit: int, seed: int = 0) -> list[Record]:
    """The hard cases of every path, in one mixed window: one token, exactly at the length limit,
    over it (cut), mixed lengths, non-ASCII, chat messages, best-of-n prompt/response pairs (one
    prompt long enough to be cut with its response)."""
    rng = random.Random(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    at_limit = " ".join(["the"] * limit)
    assert len(tokenizer(at_limit)["input_ids"]) == limit, "'the' must be one token"
    one = "the"
    assert len(tokenizer(one)["input_ids"]) == 1
    records = [
        Record(line=0, text=one),
        Record(line=0, text=at_limit),
        Record(line=0, text=" ".join(["the"] * (limit + 9))),
        Record(line=0, text="Grüße aus Köln, 東京 — naïve café 🙂 ünïcödé"),
        Record(
            line=0,
            messages=[
                {"role": "user", "content": "what is the quick fox?"},
                {"role": "assistant", "content": "a fox that jumps 🙂"},
            ],
        ),
        *(Record(line=0, text=words(1, 40)) for _ in range(6)),
    ]
    for prompt in (words(3, 12), words(12, 30), " ".join(["fox"] * (limit - 3))):
        records += [Record(line=0, prompt=prompt, response=" " + words(1, 9)) for _ in range(3)]
    records.append(Record(line=0, text="the"))  # one token again, in another batch
    rng.shuffle(records)
    for index, record in enumerate(records, start=1):
        record.line, record.id, record.has_id = index, f"r{index}", True
    return records


@torch.no_grad()
def plain_forward(model: Any, ids: list[int], *, reward: str | None = None) -> torch.Tensor:
    """Per-token values (or, with ``reward``, per-token rewards) of one unpadded causal sequence, float32."""
    base = model.pretrained_model
    tensor = torch.tensor([ids])
    if reward is None:
        context = base.disable_adapter() if hasattr(base, "disable_adapter") else _nothing()
    else:
        base.set_adapter(reward)
        context = _nothing()
    with context:
        out = base(input_ids=tensor, output_hidden_states=True, return_dict=True, use_cache=False)
    hidden = out.hidden_states[-1]
    if reward is not None:
        head = model.score
        return head(hidden.to(head.weight.dtype))[0, :, 0].float()
    return model.v_head(hidden).squeeze(-1)[0].float()


@torch.no_grad()
def plain_seq2seq(model: Any, enc: list[int], dec: list[int]) -> torch.Tensor:
    """Per-token values of one seq2seq pair (encoder ids, decoder ids starting with the start token)."""
    out = model.pretrained_model(
        input_ids=torch.tensor([enc]),
        decoder_input_ids=torch.tensor([dec]),
        output_hidden_states=True,
        return_dict=True,
        use_cache=False,
    )
    return model.v_head(out.decoder_hidden_states[-1]).squeeze(-1)[0].float()


def check_results(
    results: list[dict[str, Any]],
    records: list[Record],
    references: list[torch.Tensor],
    *,
    atol: float,
    key: str = "value",
    per_token: bool = False,
) -> float:
    """Every result equals its reference within ``atol``: in input order, the last token's number
    (``key``) and, with ``per_token``, every token's value. Returns the largest difference seen."""
    assert [r.get("id") for r in results] == [rec.id for rec in records]  # input order, ids echoed
    worst = 0.0
    for record, result, reference in zip(records, results, references, strict=True):
        assert "error" not in result, (record, result)
        diff = abs(result[key] - reference[-1].item())
        worst = max(worst, diff)
        assert diff <= atol, (record.line, key, result[key], reference[-1].item())
        if per_token:
            got = torch.tensor(result["values"])
            assert got.shape == reference.shape, record.line
            worst = max(worst, float((got - reference).abs().max()))
            torch.testing.assert_close(got, reference, atol=atol, rtol=0)
    return worst


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
