"""``vhctl serve`` over real HTTP (127.0.0.1, ephemeral port), the app under uvicorn in this process."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from helpers.servekit import TIMEOUT, Gate, assert_same_results, score_cli, served, wait_for

from vhctl.serve.server import load_session, server_score_options

PROMPT = "The quick brown fox was asked a question about the lazy dog, and"
RESPONSES = [
    " it jumped.",
    " it slept all day long.",
    " nothing",
    " the dog barked twice at the moon",
    " a long answer " * 6,
    " no.",
    " perhaps",
    " it ran off into the woods",
]
MIXED: list[Any] = [
    "a plain text line",
    {"id": "p1", "prompt": "the fox", "response": " jumps"},
    {"id": 7, "prompt": "the fox", "response": " sleeps over the dog"},
    {"id": None, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    {"text": "another text, a little longer than the first one, with more words in it"},
]


def post(url: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=TIMEOUT, **kwargs)


def metric(url: str, name: str, headers: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=TIMEOUT).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


# ---------------------------------------------------------------------------------------------- values


def test_get_reward_answers_openrlhfs_exact_request(loaded, tiny_ckpt) -> None:
    """OpenRLHF's client: aiohttp ``json=`` of {"query", "prompts", "labels"}, one sample per request;
    it reads ``scores`` (or ``rewards``), and may send an empty shard to a second server."""
    queries = [PROMPT + r for r in RESPONSES[:3]]
    expected = score_cli(tiny_ckpt, [{"text": q, "add_special_tokens": False} for q in queries])
    with served(loaded) as server:
        for query, want in zip(queries, expected, strict=True):
            response = httpx.post(
                f"{server.url}/get_reward",
                timeout=TIMEOUT,
                content=json.dumps({"query": [query], "prompts": [PROMPT], "labels": [None]}),
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/json")
            body = response.json()
            assert set(body) == {"rewards", "scores", "extra_logs"}  # the older client reads extra_logs
            assert body["rewards"] == body["scores"]
            assert abs(body["rewards"][0] - want["value"]) <= 1e-5
        empty = post(server.url, "/get_reward", {"query": [], "prompts": [], "labels": []})
        assert empty.status_code == 200 and empty.json() == {"rewards": [], "scores": [], "extra_logs": {}}
        # Without prompts (the older client sends only "query"), the same whole-text scores.
        texts = post(server.url, "/get_reward", {"query": queries})
        apart = post(
            server.url, "/get_reward", {"query": queries, "prompts": [PROMPT] * 3, "tokenize": "apart"}
        )
    assert texts.status_code == 200
    assert texts.json()["rewards"] == pytest.approx([r["value"] for r in expected], abs=1e-5)
    pairs = score_cli(tiny_ckpt, [{"prompt": PROMPT, "response": r} for r in RESPONSES[:3]])
    assert apart.json()["rewards"] == pytest.approx([r["value"] for r in pairs], abs=1e-5)


def test_concurrent_clients_get_score_values_in_order(loaded, tiny_ckpt) -> None:
    records = MIXED + [{"id": i, "prompt": PROMPT, "response": r} for i, r in enumerate(RESPONSES)]
    expected = score_cli(tiny_ckpt, records)
    requests = [records[i : i + 3] for i in range(0, len(records), 3)] * 3  # 15 requests, 8 clients
    with served(loaded) as server:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda body: post(server.url, "/v1/score", body), requests))
    for body, answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, answer.text
        start = records.index(body[0])
        assert_same_results(answer.json(), expected[start : start + len(body)])


def test_requests_that_arrive_together_share_one_window_and_the_prompt(loaded, tiny_ckpt) -> None:
    """8 best-of-n responses posted as 8 requests: one scoring window, one prompt forward."""
    expected = score_cli(tiny_ckpt, [{"text": PROMPT + r, "add_special_tokens": False} for r in RESPONSES])
    loaded.prefix_store.clear()  # nothing of this prompt from earlier tests: the window computes it once
    with served(loaded) as server:
        gate = Gate(server)
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(
                    post,
                    server.url,
                    "/get_reward",
                    {"query": [PROMPT + r], "prompts": [PROMPT], "labels": ["x"]},
                )
                for r in RESPONSES
            ]
            wait_for(lambda: server.worker.queued == len(RESPONSES), "8 queued records")
            gate.open()
            answers = [f.result(TIMEOUT) for f in futures]
        assert metric(server.url, "vhctl_serve_shared_prompts_total") == len(RESPONSES) - 1
        assert metric(server.url, "vhctl_serve_window_records_count") == 1
    for answer, want in zip(answers, expected, strict=True):
        assert answer.status_code == 200
        assert abs(answer.json()["rewards"][0] - want["value"]) <= 1e-5


def test_per_token_values_as_score_writes_them(loaded, tiny_ckpt) -> None:
    expected = score_cli(tiny_ckpt, MIXED, "--per-token")
    with served(loaded) as server:
        both = [
            post(server.url, "/v1/score", {"records": MIXED, "per_token": flag}) for flag in (True, False)
        ]
    assert_same_results(both[0].json(), expected)
    assert all("values" not in r for r in both[1].json())


def test_long_records_are_cut_as_score_cuts_them_and_say_so(loaded, tiny_ckpt) -> None:
    long = "word " * 40
    records = [{"text": long}, "short", {"prompt": long, "response": " end"}]
    expected = score_cli(tiny_ckpt, records, "--max-length", "16")
    session = load_session(server_score_options(str(tiny_ckpt), device="cpu", max_length=16))
    with served(session) as server:
        scored = post(server.url, "/v1/score", records).json()
        reward = post(server.url, "/get_reward", {"query": ["short", long]}).json()
    assert [r.get("truncated", False) for r in scored] == [True, False, True]
    assert_same_results(scored, expected)
    assert reward["truncated"] == [1]


# ---------------------------------------------------------------------------------------------- refusals


def test_bad_requests_get_400_naming_the_record_and_leave_others_alone(loaded, tiny_ckpt) -> None:
    good = [{"id": 1, "text": "fine"}]
    expected = score_cli(tiny_ckpt, good)
    with served(loaded) as server:
        url = server.url
        invalid = httpx.post(f"{url}/v1/score", content=b'[{"text": "a"', timeout=TIMEOUT)
        assert invalid.status_code == 400 and "invalid JSON" in invalid.json()["error"]
        bad = post(url, "/v1/score", [{"text": "a"}, {"text": "b"}, {"txt": "c"}])
        assert bad.status_code == 400
        assert bad.json()["index"] == 2 and bad.json()["error"].startswith("record 2: no known field")
        assert post(url, "/v1/score", {"text": "x"}).status_code == 400
        assert post(url, "/get_reward", {"query": ["a", 3]}).json() == {
            "error": "query[1]: must be a string",
            "index": 1,
        }
        assert post(url, "/get_reward", {"query": ["a"], "prompts": ["a", "b"]}).status_code == 400
        # A record the tokenizer cannot score is found by the worker, in a window shared with a good request.
        gate = Gate(server)
        with ThreadPoolExecutor(2) as pool:
            empty = pool.submit(post, url, "/v1/score", [{"text": "ok"}, {"text": ""}])
            fine = pool.submit(post, url, "/v1/score", good)
            wait_for(lambda: server.worker.queued == 3, "both requests queued")
            gate.open()
            empty_answer, fine_answer = empty.result(TIMEOUT), fine.result(TIMEOUT)
        assert metric(url, "vhctl_serve_window_records_count") == 1  # scored together
    assert empty_answer.status_code == 400
    assert empty_answer.json()["index"] == 1 and "nothing to score" in empty_answer.json()["error"]
    assert fine_answer.status_code == 200
    assert_same_results(fine_answer.json(), expected)


def test_body_over_the_limit_gets_413(loaded) -> None:
    with served(loaded, max_body_bytes=1000, max_queue=4) as server:
        big = post(server.url, "/v1/score", [{"text": "x" * 2000}])
        assert big.status_code == 413 and "--max-body-bytes" in big.json()["error"]

        def chunks():  # no Content-Length: the limit holds while reading
            for _ in range(20):
                yield b" " * 100

        streamed = httpx.post(f"{server.url}/v1/score", content=chunks(), timeout=TIMEOUT)
        assert streamed.status_code == 413
        too_many = post(server.url, "/v1/score", ["a"] * 5)
        assert too_many.status_code == 413 and "--max-queue" in too_many.json()["error"]
        assert post(server.url, "/v1/score", ["a"] * 4).status_code == 200


def test_full_queue_gets_503_with_retry_after_then_recovers(loaded) -> None:
    with served(loaded, max_queue=4) as server:
        gate = Gate(server)
        with ThreadPoolExecutor(2) as pool:
            waiting = pool.submit(post, server.url, "/v1/score", ["a", "b", "c"])
            wait_for(lambda: server.worker.queued == 3, "3 queued records")
            refused = post(server.url, "/v1/score", ["d", "e"])
            fits = pool.submit(post, server.url, "/v1/score", ["f"])
            wait_for(lambda: server.worker.queued == 4, "4 queued records")
            gate.open()
            assert waiting.result(TIMEOUT).status_code == 200 and fits.result(TIMEOUT).status_code == 200
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1" and "queue is full" in refused.json()["error"]
        assert post(server.url, "/v1/score", ["d", "e"]).status_code == 200
        assert metric(server.url, 'vhctl_serve_requests_total{endpoint="/v1/score",status="503"}') == 1


def test_health_is_503_until_the_model_is_loaded(loaded) -> None:
    with served(None) as server:
        health = httpx.get(f"{server.url}/health", timeout=TIMEOUT)
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        assert post(server.url, "/get_reward", {"query": ["a"]}).status_code == 503
        server.serve_model(loaded)
        ready = httpx.get(f"{server.url}/health", timeout=TIMEOUT)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["device"] == "cpu"
    assert ready.json()["max_length"] == 512


def test_api_key_is_required_and_never_shown(loaded) -> None:
    key = "s3cret-key-0123456789"
    log: list[str] = []
    good = {"Authorization": f"Bearer {key}"}
    with served(loaded, api_key=key, log=log) as server:
        url = server.url
        for headers in (
            None,
            {"Authorization": "Bearer wrong"},
            {"Authorization": key},
            {"Authorization": f"Basic {key}"},
        ):
            for path in ("/v1/score", "/get_reward"):
                refused = httpx.post(f"{url}{path}", json=["a"], headers=headers, timeout=TIMEOUT)
                assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
            assert httpx.get(f"{url}/metrics", headers=headers, timeout=TIMEOUT).status_code == 401
        assert post(url, "/v1/score", ["a"], headers=good).status_code == 200
        assert post(url, "/get_reward", {"query": ["a"]}, headers=good).status_code == 200
        open_health = httpx.get(f"{url}/health", timeout=TIMEOUT)
        assert open_health.status_code == 200 and open_health.json() == {"status": "ready"}  # no model facts
        assert "model" in httpx.get(f"{url}/health", headers=good, timeout=TIMEOUT).json()
        metrics = httpx.get(f"{url}/metrics", headers=good, timeout=TIMEOUT).text
    assert 'status="401"' in metrics and key not in metrics
    assert log and not any(key in line for line in log)
    assert "POST /v1/score 401 0 record(s)" in log[0]
    assert any(line.startswith("POST /v1/score 200 1 record(s) ") and line.endswith(" ms") for line in log)


def test_a_client_killed_mid_request_does_not_disturb_the_others(loaded, tiny_ckpt) -> None:
    records = [{"id": i, "prompt": PROMPT, "response": r} for i, r in enumerate(RESPONSES)]
    expected = score_cli(tiny_ckpt, records)
    body = json.dumps(records).encode()
    with served(loaded) as server:
        host, port = server.url.removeprefix("http://").split(":")
        gate = Gate(server)
        # One client sends half a body and dies; another sends a whole request and dies before the answer.
        half = socket.create_connection((host, int(port)))
        half.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2]
        )
        whole = socket.create_connection((host, int(port)))
        whole.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        with ThreadPoolExecutor(4) as pool:
            others = [pool.submit(post, server.url, "/v1/score", records) for _ in range(3)]
            wait_for(lambda: server.worker.queued == 4 * len(records), "four requests queued")
            half.close()
            whole.close()
            gate.open()
            answers = [f.result(TIMEOUT) for f in others]
        for answer in answers:
            assert answer.status_code == 200
            assert_same_results(answer.json(), expected)
        assert post(server.url, "/v1/score", records[:1]).status_code == 200  # still serving
        assert httpx.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200


def test_reward_adapter_and_normalisation_as_score_gives_them(tmp_path) -> None:
    """``--reward-adapter judge --normalize``: /v1/score as ``score --reward-adapter judge --normalize``;
    /get_reward answers the adapter's reward."""
    from helpers.tiny_models import make_reward_adapter
    from typer.testing import CliRunner

    from vhctl.checkpoint.manifest import Manifest
    from vhctl.cli.app import app

    ck = tmp_path / "ck"
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["wrap", "vhctl:tiny", "--out", str(ck), "--init", "normal", "--seed", "1"]
        ).exit_code
        == 0
    )
    adapter = make_reward_adapter("gpt2", tmp_path / "rm", ck, seed=3)
    assert (
        runner.invoke(app, ["attach-reward-adapter", str(ck), str(adapter), "--name", "judge"]).exit_code == 0
    )
    manifest = Manifest.read(ck)
    manifest.extra["reward_normalization"] = {"mean": 0.5, "std": 2.0}
    manifest.write(ck)
    expected = score_cli(ck, MIXED, "--reward-adapter", "judge", "--normalize")
    loaded = load_session(server_score_options(str(ck), device="cpu", reward="judge", normalize=True))
    with served(loaded) as server:
        scored = post(server.url, "/v1/score", MIXED)
        rewards = post(server.url, "/get_reward", {"query": ["a plain text line"]})
    assert_same_results(scored.json(), expected)
    assert rewards.json()["rewards"] == pytest.approx([expected[0]["reward"]], abs=1e-5)
    assert expected[0]["reward"] != pytest.approx(expected[0]["value"], abs=1e-3)
