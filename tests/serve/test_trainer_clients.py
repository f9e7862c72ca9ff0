"""Trainers' own clients against the real ``vhctl serve``: OpenRLHF (current and older), vLLM pooling.

OpenRLHF's requests are built as its code builds them (openrlhf/utils/agent.py,
``SingleTurnAgentExecutor``: the prompt tokenized without special tokens, the generated ids
appended, ending with EOS, decoded with special tokens kept, one sample per request; the older
``remote_rm_utils`` client: the decoded queries of a batch in one request, reading ``extra_logs``).
OpenRLHF's own server (openrlhf/cli/serve_rm.py) scores each query tokenized whole with
``add_special_tokens=False``, the reward at its last token: the oracle computes exactly that with
the checkpoint's model, and ``vhctl score`` on the same record must agree (1e-5).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from helpers.servekit import TIMEOUT, ServeProcess, score_cli, wait_for
from helpers.tiny_models import tiny_config, tiny_tokenizer

from vhctl.modeling import load_checkpoint
from vhctl.ops.wrap import wrap_model

PROMPTS = ["<|user|>\nWhat is 2+2?", "The quick brown fox", "Tell me about the lazy dog"]
RESPONSES = [" It is 4.", " jumped over it", " It sleeps all day, and then it sleeps more"]
BOS = "<s>"


def _llama_with_bos(tmp: Path) -> Path:
    """A Llama-shaped checkpoint whose tokenizer puts a BOS (``<s>``, its own id) before every text."""
    from tokenizers import processors
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.vocab_size = 1032
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp / "llama")
    tok = tiny_tokenizer()
    tok.add_special_tokens({"bos_token": BOS})
    bos = tok.convert_tokens_to_ids(BOS)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, bos)]
    )
    tok.save_pretrained(tmp / "llama")
    wrap_model(str(tmp / "llama"), tmp / "llama-ck", init="normal", std=0.5, seed=1)
    return tmp / "llama-ck"


@pytest.fixture(scope="module", params=["gpt2", "llama-bos"])
def model(request: pytest.FixtureRequest, tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint, tokenizer, server URL, server): the tiny GPT-2 and a Llama-shaped model with a BOS."""
    from transformers import AutoTokenizer

    ckpt = tiny_ckpt if request.param == "gpt2" else _llama_with_bos(tmp_path_factory.mktemp("llama"))
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    if request.param == "llama-bos":
        assert tok("a")["input_ids"][0] == tok.bos_token_id != tok.eos_token_id
    server = ServeProcess(ckpt)
    try:
        yield ckpt, tok, server.wait_ready(), server
    finally:
        server.kill()


def _current_trainer_query(tok: Any, prompt: str, response: str) -> str:
    """What SingleTurnAgentExecutor posts as the query: prompt ids + generated ids (EOS last), decoded."""
    prompt_ids = tok(text=prompt, add_special_tokens=False)["input_ids"]
    generated = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return tok.decode(prompt_ids + generated, skip_special_tokens=False)


def _openrlhf_reward(ckpt: Path, tok: Any, query: str) -> float:
    """serve_rm.py's reward: the query tokenized whole without special tokens, the value at its last token."""
    ids = torch.tensor([tok(query, add_special_tokens=False)["input_ids"]])
    model = load_checkpoint(ckpt).eval()
    with torch.no_grad():
        _, _, values = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return float(values[0, -1])


def test_openrlhf_current_trainer_gets_openrlhfs_own_rewards(model) -> None:
    ckpt, tok, url, _ = model
    prompts = PROMPTS + [BOS + PROMPTS[0]]  # a prompt whose chat template wrote the BOS
    responses = RESPONSES + [RESPONSES[0]]
    queries = [_current_trainer_query(tok, p, r) for p, r in zip(prompts, responses, strict=True)]
    assert all(q.endswith(tok.eos_token) for q in queries)

    async def one_sample(client: httpx.AsyncClient, query: str, prompt: str) -> Any:
        answer = await client.post(
            f"{url}/get_reward", json={"query": [query], "prompts": [prompt], "labels": [""]}
        )
        answer.raise_for_status()
        return answer.json()

    async def rollout() -> list[Any]:  # the trainer's samples arrive at once, one request each
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(
                *(one_sample(client, q, p) for q, p in zip(queries, prompts, strict=True))
            )

    answers = asyncio.run(rollout())
    got = [a.get("scores", a["rewards"])[0] for a in answers]
    oracle = [_openrlhf_reward(ckpt, tok, q) for q in queries]
    scored = [
        r["value"] for r in score_cli(ckpt, [{"text": q, "add_special_tokens": False} for q in queries])
    ]
    assert max(abs(a - b) for a, b in zip(got, oracle, strict=True)) <= 1e-5, (got, oracle)
    assert max(abs(a - b) for a, b in zip(got, scored, strict=True)) <= 1e-5, (got, scored)

    # Scoring prompt and response apart is asked for explicitly, and it is what `score` gives pairs.
    apart = httpx.post(
        f"{url}/get_reward",
        json={"query": queries[:3], "prompts": prompts[:3], "labels": [""] * 3, "tokenize": "apart"},
        timeout=TIMEOUT,
    ).json()["rewards"]
    eos = tok.eos_token
    pairs = score_cli(
        ckpt, [{"prompt": p, "response": r + eos} for p, r in zip(prompts[:3], responses[:3], strict=True)]
    )
    assert apart == pytest.approx([r["value"] for r in pairs], abs=1e-5)


def test_openrlhf_older_batched_client_reads_its_fields(model) -> None:
    """remote_rm_utils.request_api_wrapper: requests.post(json=...), then rewards, scores, extra_logs."""
    requests = pytest.importorskip("requests")
    ckpt, tok, url, _ = model
    queries = [_current_trainer_query(tok, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    response = requests.post(
        url=f"{url}/get_reward",
        json={"query": queries, "prompts": PROMPTS, "labels": [None] * len(queries)},
        headers={"Content-Type": "application/json"},
        timeout=600,
    )
    response.raise_for_status()
    body = response.json()
    rewards = torch.tensor(body["rewards"])
    assert torch.equal(rewards, torch.tensor(body["scores"]))
    assert {key: torch.tensor(value) for key, value in body["extra_logs"].items()} == {}
    oracle = torch.tensor([_openrlhf_reward(ckpt, tok, q) for q in queries])
    assert torch.allclose(rewards, oracle, atol=1e-5, rtol=0)


def test_refusals_are_logged_with_their_reason_and_record(model) -> None:
    _, _, url, server = model
    bad = httpx.post(f"{url}/get_reward", json={"query": ["fine", 3]}, timeout=TIMEOUT)
    assert bad.status_code == 400 and bad.json() == {"error": "query[1]: must be a string", "index": 1}
    empty = httpx.post(f"{url}/get_reward", json={"query": ["fine", ""]}, timeout=TIMEOUT)
    assert empty.status_code == 400 and empty.json()["index"] == 1  # refused by the scorer: nothing to score

    def logged(needle: str) -> bool:
        return any(needle in line for line in server.stderr_lines)

    wait_for(lambda: logged("query[1]: must be a string [record index 1]"), "the 400's reason in the log")
    wait_for(lambda: logged("nothing to score"), "the scorer's refusal in the log")
    line = next(line for line in server.stderr_lines if "query[1]: must be a string" in line)
    assert "POST /get_reward 400" in line


def test_the_server_option_scores_prompt_and_response_apart(tiny_ckpt: Path) -> None:
    """--get-reward-tokenize apart: for a reward model trained on prompt and response tokenized apart."""
    from typer.testing import CliRunner

    from vhctl.cli.app import app

    bad = CliRunner().invoke(app, ["serve", str(tiny_ckpt), "--get-reward-tokenize", "split"])
    assert bad.exit_code == 2 and "--get-reward-tokenize" in bad.output
    server = ServeProcess(tiny_ckpt, "--get-reward-tokenize", "apart")
    try:
        url = server.wait_ready()
        queries = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]
        body = {"query": queries, "prompts": PROMPTS, "labels": [None] * 3}
        apart = httpx.post(f"{url}/get_reward", json=body, timeout=TIMEOUT).json()["rewards"]
        whole = httpx.post(f"{url}/get_reward", json={**body, "tokenize": "whole"}, timeout=TIMEOUT).json()
    finally:
        server.kill()
    pairs = score_cli(
        tiny_ckpt, [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    )
    assert apart == pytest.approx([r["value"] for r in pairs], abs=1e-5)
    texts = score_cli(tiny_ckpt, [{"text": q, "add_special_tokens": False} for q in queries])
    assert whole["rewards"] == pytest.approx([r["value"] for r in texts], abs=1e-5)


# ------------------------------------------------------------------------------------ vLLM's pooling API


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_vllm_classify_client_gets_vhctl_values(model) -> None:
    requests = pytest.importorskip("requests")
    ckpt, tok, url, _ = model
    texts = ["Hello, my name is", "The president of the United States is", "The capital of France is"]
    values = [r["value"] for r in score_cli(ckpt, [{"text": t} for t in texts])]
    models = httpx.get(f"{url}/v1/models", timeout=TIMEOUT).json()
    assert models["object"] == "list" and len(models["data"]) == 1
    name = models["data"][0]["id"]
    assert name == str(ckpt)

    # As vLLM's examples/pooling/classify/openai_classification_client.py sends it.
    answer = requests.post(
        f"{url}/classify", headers={"User-Agent": "Test Client"}, json={"model": name, "input": texts}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and body["id"].startswith("classify-") and body["model"] == name
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["num_classes"] == 1 and d["label"] == "LABEL_0" for d in body["data"])
    probs = [d["probs"][0] for d in body["data"]]  # use_activation left out: on, sigmoid for one label
    assert probs == pytest.approx([_sigmoid(v) for v in values], abs=1e-6)
    ids = [tok(t)["input_ids"] for t in texts]
    assert body["usage"]["prompt_tokens"] == sum(map(len, ids)) and body["usage"]["completion_tokens"] == 0

    # As a reward loop sends it: the raw value, for a text, token ids, lists of token ids.
    for given, want in ((texts[0], values[:1]), (ids[1], values[1:2]), (ids, values)):
        raw = httpx.post(
            f"{url}/classify", json={"model": name, "input": given, "use_activation": False}, timeout=TIMEOUT
        )
        assert raw.status_code == 200, raw.text
        assert [d["probs"][0] for d in raw.json()["data"]] == pytest.approx(want, abs=1e-5)
    on = httpx.post(
        f"{url}/classify", json={"model": name, "input": texts[2], "use_activation": True}, timeout=TIMEOUT
    )
    assert on.json()["data"][0]["probs"][0] == pytest.approx(_sigmoid(values[2]), abs=1e-6)

    for body, needle in (
        ({"model": name}, "no 'input'"),
        ({"input": []}, "'input' must be"),
        ({"input": [[1, 2], "x", 5]}, "input[2]"),
        ({"input": [10**9]}, "not a token id"),
        ({"input": "x", "use_activation": "yes"}, "'use_activation' must be true or false"),
    ):
        refused = httpx.post(f"{url}/classify", json=body, timeout=TIMEOUT)
        assert refused.status_code == 400 and needle in refused.json()["error"], (body, refused.text)


def test_score_reads_add_special_tokens(tiny_ckpt: Path) -> None:
    from typer.testing import CliRunner

    from vhctl.cli.app import app

    bad = CliRunner().invoke(
        app, ["score", str(tiny_ckpt)], input=json.dumps({"text": "a", "add_special_tokens": 1})
    )
    assert bad.exit_code != 0 and "'add_special_tokens' must be true or false" in bad.output
