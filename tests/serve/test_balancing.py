"""Several ``vhctl serve`` processes for one trainer, as docs/serving.md tells it.

- OpenRLHF's current client (openrlhf/utils/agent.py) shards each request's queries over the
  comma-separated URLs; it sends one sample per request, so the first URL gets every sample and the
  others empty bodies: several URLs spread no load.
- One URL in front of the servers (a balancer taking turns) spreads the same client's requests.
- The wait for ``/health`` in the page holds the trainer back until the model is loaded.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from helpers.servekit import TIMEOUT, ServeProcess, score_cli

ROOT = Path(__file__).resolve().parents[2]
QUERIES = [f"question {i % 3} about the fox? answer {i}" for i in range(8)]


@pytest.fixture(scope="module")
def servers(tiny_ckpt: Path):
    procs = [ServeProcess(tiny_ckpt), ServeProcess(tiny_ckpt)]
    try:
        yield [proc.wait_ready() for proc in procs]
    finally:
        for proc in procs:
            proc.kill()


def _records(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("vhctl_serve_records_total")
    )


def _current_client(urls: list[str], queries: list[str]) -> list[float]:
    """agent.py's _fetch_rewards_via_http for each sample (one query per call), all samples at once."""

    async def one(client: httpx.AsyncClient, query: str) -> float:
        size = -(-1 // len(urls))  # ceil(len([query]) / servers)
        answers = []
        for i, url in enumerate(urls):  # every URL gets its shard of the one-query list
            shard = [query][i * size : (i + 1) * size]
            answer = await client.post(
                url, json={"query": shard, "prompts": shard, "labels": [None] * len(shard)}
            )
            answer.raise_for_status()
            answers.append(answer.json())
        return float(answers[0]["rewards"][0])  # the trainer reads the first answer

    async def rollout() -> list[float]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return list(await asyncio.gather(*(one(client, q) for q in queries)))

    return asyncio.run(rollout())


@contextmanager
def round_robin(backends: list[str]) -> Iterator[str]:
    """The smallest balancer: each request goes to the next server in turn (what nginx's upstream does)."""
    turn = itertools.cycle(backends)
    lock = threading.Lock()

    class Proxy(BaseHTTPRequestHandler):
        def _forward(self, body: bytes | None) -> None:
            with lock:
                backend = next(turn)
            request = urllib.request.Request(backend + self.path, data=body, method=self.command)
            request.add_header("Content-Type", self.headers.get("Content-Type", "application/json"))
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                    status, payload = answer.status, answer.read()
            except urllib.error.HTTPError as exc:
                status, payload = exc.code, exc.read()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def do_GET(self) -> None:  # noqa: N802
            self._forward(None)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_list_sends_every_sample_to_the_first_server(servers, tiny_ckpt) -> None:
    first, second = servers
    before = [_records(first), _records(second)]
    rewards = _current_client([f"{first}/get_reward", f"{second}/get_reward"], QUERIES)
    after = [_records(first), _records(second)]
    assert after[0] - before[0] == len(QUERIES) and after[1] == before[1]  # the second one got empty bodies
    expected = [
        r["value"] for r in score_cli(tiny_ckpt, [{"text": q, "add_special_tokens": False} for q in QUERIES])
    ]
    assert rewards == pytest.approx(expected, abs=1e-5)


def test_one_url_in_front_of_the_servers_spreads_the_samples(servers, tiny_ckpt) -> None:
    first, second = servers
    before = [_records(first), _records(second)]
    with round_robin(servers) as url:
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
        rewards = _current_client([f"{url}/get_reward"], QUERIES)
    got = [_records(first) - before[0], _records(second) - before[1]]
    assert got == [len(QUERIES) / 2, len(QUERIES) / 2]
    expected = [
        r["value"] for r in score_cli(tiny_ckpt, [{"text": q, "add_special_tokens": False} for q in QUERIES])
    ]
    assert rewards == pytest.approx(expected, abs=1e-5)


def test_the_pages_health_wait_holds_until_the_model_is_loaded(tiny_ckpt) -> None:
    """The shell loop docs/serving.md gives, run as it is, against a server still loading."""
    page = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    wait = re.search(r"^(until curl .*/health.*done)$", page, re.M)
    assert wait is not None, "docs/serving.md lost its wait-for-health line"
    server = ServeProcess(tiny_ckpt, quiet=True)  # its URL is known before it listens
    try:
        assert server.url is not None
        script = wait.group(1).replace("http://127.0.0.1:5000", server.url)
        done = subprocess.run(["bash", "-c", script], timeout=TIMEOUT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert httpx.get(f"{server.url}/health", timeout=TIMEOUT).json()["status"] == "ready"
        answer = httpx.post(f"{server.url}/get_reward", json={"query": ["a first sample"]}, timeout=TIMEOUT)
        assert answer.status_code == 200
    finally:
        server.kill()


def test_the_pages_nginx_config_spreads_the_samples(servers, tiny_ckpt, tmp_path: Path) -> None:
    """The nginx block of docs/serving.md, run as it is (ports changed), when nginx is installed."""
    import shutil
    import signal

    from helpers.servekit import free_port, wait_for

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (the round-robin test above covers the same client)")
    page = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    block = re.search(r"```nginx\n(.*?)```", page, re.S)
    assert block is not None, "docs/serving.md lost its nginx config"
    port = free_port()
    ports = [url.rsplit(":", 1)[1] for url in servers]
    config = block.group(1).replace("127.0.0.1:5000", f"127.0.0.1:{ports[0]}")
    config = config.replace("127.0.0.1:5001", f"127.0.0.1:{ports[1]}").replace(
        "listen 5050", f"listen 127.0.0.1:{port}"
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path};\n proxy_temp_path {tmp_path};\n{config}}}\n"
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"]
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None

        wait_for(up, "nginx to answer")
        assert proc.poll() is None, (tmp_path / "error.log").read_text()
        before = [_records(s) for s in servers]
        rewards = _current_client([f"{url}/get_reward"], QUERIES)
        got = [_records(s) - b for s, b in zip(servers, before, strict=True)]
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(TIMEOUT)
    assert got == [len(QUERIES) / 2, len(QUERIES) / 2]
    expected = [
        r["value"] for r in score_cli(tiny_ckpt, [{"text": q, "add_special_tokens": False} for q in QUERIES])
    ]
    assert rewards == pytest.approx(expected, abs=1e-5)
