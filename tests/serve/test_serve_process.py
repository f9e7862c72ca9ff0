"""The real ``vhctl serve`` command in subprocesses: two servers behind a spreading client, signals, -q."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers.servekit import TIMEOUT, ServeProcess, score_cli, wait_for

LONG = [" ".join(f"w{(i * 7 + j) % 50} word" for j in range(120)) for i in range(64)]  # 370 tokens each


@pytest.fixture(scope="module")
def servers(tiny_ckpt):
    """Two servers on the CPU, as one per device behind a load balancer; the second one with -q."""
    procs = [
        ServeProcess(tiny_ckpt, "--batch-size", "1"),
        ServeProcess(tiny_ckpt, "--batch-size", "1", quiet=True),
    ]
    try:
        urls = [proc.wait_ready() for proc in procs]
        yield list(zip(procs, urls, strict=True))
    finally:
        for proc in procs:
            proc.kill()


def _reward_shards(urls: list[str], queries: list[str], prompts: list[str]) -> list[float]:
    """OpenRLHF's client with several --remote_rm_url: one contiguous shard per server, posted at once."""
    size = -(-len(queries) // len(urls))
    with ThreadPoolExecutor(len(urls)) as pool:
        answers = list(
            pool.map(
                lambda i: httpx.post(
                    urls[i],
                    timeout=TIMEOUT,
                    json={
                        "query": queries[i * size : (i + 1) * size],
                        "prompts": prompts[i * size : (i + 1) * size],
                        "labels": [None] * len(queries[i * size : (i + 1) * size]),
                    },
                ),
                range(len(urls)),
            )
        )
    rewards: list[float] = []
    for answer in answers:
        assert answer.status_code == 200, answer.text
        rewards.extend(answer.json()["rewards"])
    return rewards


def test_two_servers_share_a_clients_load_with_the_same_values(servers, tiny_ckpt) -> None:
    prompts = [f"question {i // 4} about the fox and the dog" for i in range(16)]
    responses = [f" answer number {i} is {'yes ' * (i % 5)}" for i in range(16)]
    expected = score_cli(
        tiny_ckpt, [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
    )
    urls = [f"{url}/get_reward" for _, url in servers]
    queries = [p + r for p, r in zip(prompts, responses, strict=True)]
    with ThreadPoolExecutor(4) as pool:  # 4 trainers at once
        results = list(pool.map(lambda _: _reward_shards(urls, queries, prompts), range(4)))
    for rewards in results:
        assert rewards == pytest.approx([e["value"] for e in expected], abs=1e-5)
    for _, url in servers:  # each server took its share
        text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
        assert 'vhctl_serve_records_total{endpoint="/get_reward"} 32.0' in text


@pytest.mark.parametrize("which, sig", [(0, signal.SIGTERM), (1, signal.SIGINT)])
def test_a_signal_drains_the_requests_in_flight_and_exits_0(servers, tiny_ckpt, which, sig) -> None:
    """12 requests in flight (one long one holds the model), then the signal: the server stops
    accepting at once, answers all 12 in full, and exits 0."""
    proc, url = servers[which]
    expected = [e["value"] for e in score_cli(tiny_ckpt, LONG)]
    answered: list[tuple[float, httpx.Response]] = []

    def client(records: list[str]) -> None:
        response = httpx.post(f"{url}/v1/score", json=records, timeout=TIMEOUT)
        answered.append((time.monotonic(), response))

    def in_flight() -> float:
        text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("vhctl_serve_requests_in_flight ")
        )

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(client, LONG)]  # about 2 s of work for the model
        wait_for(lambda: in_flight() == 1, "the long request to arrive")
        futures += [pool.submit(client, LONG[:4]) for _ in range(11)]
        wait_for(lambda: in_flight() == 12, "12 requests in flight")
        proc.signal(sig)
        wait_for(lambda: _refused(url), "the server to stop accepting connections")
        closed = time.monotonic()
        for future in futures:
            future.result(TIMEOUT)
    assert proc.wait() == 0, proc.stderr
    assert len(answered) == 12
    assert any(at > closed for at, _ in answered)  # answered after the listener had closed
    for _, response in answered:
        assert response.status_code == 200  # every accepted request is answered in full
        got = [g["value"] for g in response.json()]
        assert got == pytest.approx(expected[: len(got)], abs=1e-5)
    if which == 0:
        assert any(line.startswith("ready: serving") and url in line for line in proc.stderr_lines)
        assert any(line.startswith("POST /v1/score 200 64 record(s) ") for line in proc.stderr_lines)
        assert "Traceback" not in proc.stderr
    else:  # -q: nothing at all on stderr
        assert proc.stderr == ""


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=5)
    except httpx.ConnectError:
        return True
    return False


def test_without_the_extra_serve_says_what_to_install(tiny_ckpt) -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; sys.argv = ['vhctl', 'serve', sys.argv[1]]; "
        "from vhctl.cli.app import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_ckpt)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: vhctl serve needs the 'serve' extra (starlette is not installed): pip install 'vhctl[serve]'"
    ]
