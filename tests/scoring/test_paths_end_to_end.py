"""The paths a user runs, end to end, equal a plain transformers forward of the same weights.

``vhctl score`` (the CLI, its defaults), ``vhctl serve`` over HTTP (its defaults: the prefix cache
on, compile auto; and with ``--compile on``, traced before it says ready) and torchrun with 2 ranks,
each on the hard cases of :func:`helpers.differential.hard_records`, with and without per-token
values and the reward adapter. The in-process matrix of every path is ``test_paths_equal.py``.
"""

from __future__ import annotations

import json
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers.differential import check_results, expected_ids, hard_records, plain_forward
from helpers.tiny_models import make_reward_adapter, save_tiny_model, tiny_tokenizer
from helpers.torchrun import torchrun_command, torchrun_env
from typer.testing import CliRunner

from vhctl import AutoModelForCausalLMWithValueHead
from vhctl.cli.app import app
from vhctl.modeling.reward import attach_reward_adapter

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from helpers.servekit import TIMEOUT, served  # noqa: E402

from vhctl.serve.server import load_session, server_score_options  # noqa: E402

runner = CliRunner()
EAGER_TOL = 1e-5
COMPILED_TOL = 5e-5
LIMIT = 128  # the tiny GPT-2's positions


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny GPT-2 checkpoint (vhctl wrap, seeded head) with a reward adapter named ``rm``."""
    root = tmp_path_factory.mktemp("e2e")
    base = save_tiny_model("gpt2", root / "base", seed=0)
    out = root / "ck"
    wrapped = runner.invoke(app, ["wrap", str(base), "--out", str(out), "--init", "normal", "--seed", "0"])
    assert wrapped.exit_code == 0, wrapped.output
    adapter = make_reward_adapter("gpt2", root / "rm", base, seed=2)
    attached = runner.invoke(app, ["attach-reward-adapter", str(out), str(adapter), "--name", "rm"])
    assert attached.exit_code == 0, attached.output
    return out


@pytest.fixture(scope="module")
def reference(ckpt):
    """The plain forward's per-token values and rewards of every hard record."""
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt)).eval()
    model = attach_reward_adapter(model, "rm", ckpt / "adapters" / "rm")
    tok = tiny_tokenizer()
    records = hard_records(tok, LIMIT, seed=5)
    ids = [expected_ids(tok, r, LIMIT) for r in records]
    return {
        "records": records,
        "values": [plain_forward(model, i) for i in ids],
        "rewards": [plain_forward(model, i, reward="rm") for i in ids],
    }


def as_json(record) -> dict:
    fields = {
        k: v
        for k, v in asdict(record).items()
        if v is not None and k in ("id", "text", "prompt", "response", "messages")
    }
    return fields


def check(results, reference, *, per_token: bool, reward: bool, atol: float) -> None:
    records = reference["records"]
    check_results(results, records, reference["values"], atol=atol, per_token=per_token)
    if reward:
        check_results(results, records, reference["rewards"], atol=atol, key="reward")


@pytest.mark.parametrize(("per_token", "reward"), [(False, False), (True, True)])
def test_score_cli_with_its_defaults(ckpt, reference, tmp_path, per_token, reward) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(as_json(r)) + "\n" for r in reference["records"]))
    args = ["score", str(ckpt), "--input", str(source), "--device", "cpu"]
    args += ["--per-token"] * per_token + ["--reward-adapter", "rm"] * reward
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    check(
        [json.loads(line) for line in result.stdout.splitlines()],
        reference,
        per_token=per_token,
        reward=reward,
        atol=EAGER_TOL,
    )


def test_serve_with_its_defaults_over_http(ckpt, reference) -> None:
    """One request of every record, then the same again (from the prefix cache), then one record per
    request from 8 clients in a shuffled order (a trainer's samples), per-token on and off."""
    session = load_session(server_score_options(str(ckpt), device="cpu", reward="rm"))
    assert (
        session.prefix_store is not None
        and session.options.compile == "auto"
        and not session.scorer().compiled
    )
    records = [as_json(r) for r in reference["records"]]
    with served(session) as server:
        url = f"{server.url}/v1/score"
        for _ in range(2):
            answer = httpx.post(url, json=records, timeout=TIMEOUT)
            assert answer.status_code == 200, answer.text
            check(answer.json(), reference, per_token=False, reward=True, atol=EAGER_TOL)
        assert session.prefix_store.hits >= len(records) - 2
        per_token = httpx.post(url, json={"records": records, "per_token": True}, timeout=TIMEOUT)
        check(per_token.json(), reference, per_token=True, reward=True, atol=EAGER_TOL)
        session.prefix_store.clear()
        order = list(range(len(records)))
        random.Random(3).shuffle(order)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: httpx.post(url, json=[records[i]], timeout=TIMEOUT), order))
        by_index = {i: a.json()[0] for i, a in zip(order, answers, strict=True)}
    check([by_index[i] for i in range(len(records))], reference, per_token=False, reward=True, atol=EAGER_TOL)


@pytest.mark.parametrize("cache_mb", [0, 1024], ids=["no-prefix-cache", "prefix-cache"])
def test_serve_compiled_before_it_says_ready(ckpt, reference, aot_eager, cache_mb) -> None:
    """``--compile on``: the layers are traced before the server answers (warm_up), and records at
    and over the length limit get the plain forward's values (the 500 of issue 23)."""
    session = load_session(
        server_score_options(str(ckpt), device="cpu", reward="rm", compile="on", prefix_cache_mb=cache_mb)
    )
    assert session.scorer().compiles_from_start and session.warm_up() and session.scorer().compiled
    assert session.stats.records == 0 and (session.prefix_store is None or len(session.prefix_store) == 0)
    records = [as_json(r) for r in reference["records"]]
    with served(session) as server:
        answer = httpx.post(f"{server.url}/v1/score", json=records, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        assert sum(bool(r.get("truncated")) for r in answer.json()) >= 2
        check(answer.json(), reference, per_token=False, reward=True, atol=COMPILED_TOL)
        health = httpx.get(f"{server.url}/health", timeout=TIMEOUT).json()
    assert health["compiled"] is True


def test_torchrun_two_ranks(ckpt, reference, tmp_path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(as_json(r)) + "\n" for r in reference["records"]))
    command = [
        *torchrun_command(),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vhctl",
        "score",
        str(ckpt),
    ]
    command += ["--input", str(source), "--device", "cpu", "--per-token", "--reward-adapter", "rm", "-b", "2"]
    done = subprocess.run(command, capture_output=True, env=torchrun_env(), timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    results = [json.loads(line) for line in done.stdout.decode().splitlines()]
    check(results, reference, per_token=True, reward=True, atol=EAGER_TOL)


def test_a_compiled_server_keeps_its_errors_limits_and_metrics(ckpt, reference, aot_eager) -> None:
    """On the compiled session, with records over the length limit: 401 without the key, 400 naming
    the bad record, 413 for a body too large, 503 when the queue is full, 200 with the plain
    forward's values otherwise, and /metrics counting each."""
    from helpers.servekit import Gate, wait_for

    session = load_session(server_score_options(str(ckpt), device="cpu", compile="on", prefix_cache_mb=0))
    session.warm_up()
    records = [as_json(r) for r in reference["records"]]
    auth = {"Authorization": "Bearer k-1"}
    with served(session, api_key="k-1", max_body_bytes=20_000, max_queue=len(records)) as server:
        url = f"{server.url}/v1/score"
        assert httpx.post(url, json=records, timeout=TIMEOUT).status_code == 401
        bad = httpx.post(url, json=[records[0], {"prompt": 3}], headers=auth, timeout=TIMEOUT)
        assert bad.status_code == 400 and bad.json()["index"] == 1 and "prompt" in bad.json()["error"]
        big = httpx.post(url, json=["the " * 6000], headers=auth, timeout=TIMEOUT)
        assert big.status_code == 413
        good = httpx.post(url, json=records, headers=auth, timeout=TIMEOUT)
        assert good.status_code == 200 and sum(bool(r.get("truncated")) for r in good.json()) >= 2
        check(good.json(), reference, per_token=False, reward=False, atol=COMPILED_TOL)
        gate = Gate(server)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(httpx.post, url, json=records, headers=auth, timeout=TIMEOUT)
            wait_for(lambda: server.worker.queued == len(records), "the first request queued")
            full = httpx.post(url, json=records[:1], headers=auth, timeout=TIMEOUT)
            gate.open()
            assert waiting.result(TIMEOUT).status_code == 200
        assert full.status_code == 503
        metrics = httpx.get(f"{server.url}/metrics", headers=auth, timeout=TIMEOUT).text
    for status in ("200", "400", "401", "413", "503"):
        assert f'endpoint="/v1/score",status="{status}"' in metrics, status
