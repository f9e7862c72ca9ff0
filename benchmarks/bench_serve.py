"""``vhctl serve`` under load, as RLHF trainers load it, against ``vhctl score`` and a per-request server.

Two loads, each on a fresh server started with its defaults and run twice on it (no warm-up request
of ours before the first run: a first request that waits for a compile or a cold cache counts):

- ``queue`` (OpenRLHF's current trainer): 48 prompts of 80..140 words x 8 responses of 12..48 words,
  shuffled so that the samples of a prompt arrive interleaved with other prompts'; 16 clients each
  take the next record from one shared queue and post it alone (``{"query": [prompt + response],
  "prompts": [prompt], "labels": [null]}`` to ``/get_reward``) as its answer comes back;
- ``groups`` (the load of earlier rounds): workload 2 of bench_scoring (prompts of 96..160 tokens x 8
  responses of 16..64), 16 clients each posting a group's 8 responses as 8 requests at once, then its
  next group.

Compared in the same run, on the same records and model, every process with the same thread count
and no ``OMP_WAIT_POLICY`` of ours (``vhctl serve`` sets what it needs itself):

- ``vhctl score`` on the same records read from one JSONL file (its scoring time, from its summary line:
  the model load is left out for every system);
- the OpenRLHF-style baseline of ``serve_baseline.py`` (every request its own padded batch, in the
  handler, nothing batched across requests).

Throughput counts the records' tokens (vhctl's count) over the wall time from the first request to the
last answer. Values: the largest difference between the servers' rewards and ``vhctl score``'s values.

    python benchmarks/bench_serve.py                      # GPT-2 124M, both loads (about 20 min)
    python benchmarks/bench_serve.py --model gpt2-small-test --prompts 6 --groups-per-client 1   # harness check

Writes ``benchmarks/results/serve.json`` (its report carried into RESULTS.md) and
``benchmarks/RESULTS-serve.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from bench_scoring import best_of_n_workload  # noqa: E402

PER_PROMPT = 8


def ensure_checkpoint(name: str) -> Path:
    """The benchmark model built from its config (random weights, seed 0) and wrapped, once."""
    folder, ckpt = common.WORK / "models" / name, common.WORK / "ckpt" / name
    if not (ckpt / "vhctl.json").is_file():
        if not (folder / "config.json").is_file():
            print(f"building {name} from its config", flush=True)
            common.build_model_dir(name, folder)
        subprocess.run(
            [
                str(Path(sys.executable).with_name("vhctl")),
                "-q",
                "wrap",
                str(folder),
                "--out",
                str(ckpt),
                "--seed",
                "0",
                "--force",
            ],
            check=True,
            env=common.thread_env(),
        )
    return ckpt


def groups_workload(name: str, ckpt: Path, groups: int) -> list[tuple[str, str]]:
    """Workload 2 of bench_scoring: (prompt, response) texts, 8 responses per prompt, grouped."""
    config = json.loads((ckpt / "config.json").read_text())
    rows = best_of_n_workload(name, config["vocab_size"], groups, PER_PROMPT)
    return [(common.words(p), " " + common.words(r)) for p, r in rows]


def queue_workload(
    name: str, ckpt: Path, prompts: int, seed: int = 2312
) -> tuple[list[tuple[str, str]], list[int]]:
    """``prompts`` prompts of 80..140 words x 8 responses of 12..48 words (grouped), and the shuffled
    order in which a trainer's finished samples arrive."""
    config = json.loads((ckpt / "config.json").read_text())
    spec = common.special_tokens(name)
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return common.words(
            [rng.randrange(spec["first_word"], config["vocab_size"]) for _ in range(rng.randint(low, high))]
        )

    rows = []
    for _ in range(prompts):
        prompt = text(80, 140)
        rows += [(prompt, " " + text(12, 48)) for _ in range(PER_PROMPT)]
    order = list(range(len(rows)))
    rng.shuffle(order)
    return rows, order


def env() -> dict[str, str]:
    """The same threads for every system, and no OpenMP wait policy of ours: a user sets none, and
    ``vhctl serve`` sets what it needs itself (its model thread shares the cores with HTTP)."""
    base = {k: v for k, v in common.thread_env().items() if k != "OMP_WAIT_POLICY"}
    base.pop("OMP_WAIT_POLICY", None)
    return base


def start(cmd: list[str], ready: str) -> tuple[subprocess.Popen[str], str]:
    """Start a server; its URL from the first stderr line matching ``ready`` (its other lines are dropped)."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env()
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(ready, line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let its log pipe fill
            return proc, found.group(1)
    raise RuntimeError(f"{cmd[0]} did not start (exit {proc.wait()})")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def post_rows(
    url: str, rows: list[tuple[str, str]], clients: int, mode: str, order: list[int]
) -> dict[str, Any]:
    """Run one load: ``queue`` (each client posts the next record of one shared queue, alone) or
    ``groups`` (each client posts a group's records at once, then its next group)."""
    import httpx

    rewards: dict[int, float] = {}
    latencies: list[float] = []
    width = clients * (PER_PROMPT if mode == "groups" else 1)
    # A connection per request, as OpenRLHF's client opens one: a kept-alive connection that a busy
    # server closes after its idle timeout would fail the next POST on it (httpx does not retry those).
    limits = httpx.Limits(max_connections=width, max_keepalive_connections=0)

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def one(index: int) -> None:
            prompt, response = rows[index]
            body = {"query": [prompt + response], "prompts": [prompt], "labels": [None]}
            began = time.perf_counter()
            answer = await http.post(f"{url}/get_reward", json=body)
            latencies.append(time.perf_counter() - began)
            answer.raise_for_status()
            rewards[index] = answer.json()["rewards"][0]

        began = time.perf_counter()
        if mode == "queue":
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in order:
                queue.put_nowait(index)

            async def worker() -> None:
                while not queue.empty():
                    await one(queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(clients)))
        else:
            groups = [list(range(g, g + PER_PROMPT)) for g in range(0, len(rows), PER_PROMPT)]

            async def client(mine: list[int]) -> None:
                for g in mine:
                    await asyncio.gather(*(one(i) for i in groups[g]))

            await asyncio.gather(*(client(list(range(c, len(groups), clients))) for c in range(clients)))
        wall = time.perf_counter() - began
    return {"wall_s": wall, "rewards": [rewards[i] for i in range(len(rows))], "latencies": latencies}


def run_score(ckpt: Path, rows: list[tuple[str, str]], batch_size: int) -> dict[str, Any]:
    """``vhctl score`` on a JSONL file of the same records: values and its scoring time."""
    data = common.WORK / "serve-records.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("vhctl")),
            "score",
            str(ckpt),
            "--input",
            str(data),
            "--device",
            "cpu",
            "-b",
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        env=env(),
        check=True,
    )
    found = re.search(r"scored (\d+) line\(s\), (\d+) tokens in ([0-9.]+)s", done.stderr)
    assert found, done.stderr
    values = [json.loads(line)["value"] for line in done.stdout.splitlines()]
    return {"wall_s": float(found.group(3)), "tokens": int(found.group(2)), "values": values}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


LOAD_TEXT = {
    "queue": "{prompts} prompts of 80..140 words x 8 responses of 12..48 words = {records} records, {tokens} "
    "tokens, shuffled; {clients} clients each posting the next record of one shared queue alone "
    "(OpenRLHF's current trainer)",
    "groups": "workload 2 (best-of-n): {prompts} prompts of 96..160 tokens x 8 responses of 16..64 tokens = "
    "{records} records, {tokens} tokens; {clients} clients each posting a group's 8 responses as 8 requests "
    "at once, then its next group",
}


def load_report(mode: str, run: dict[str, Any], clients: int) -> tuple[list[str], dict[str, float]]:
    """One load's table and targets."""
    tokens, records = run["score"]["tokens"], len(run["score"]["values"])
    score_rate = tokens / run["score"]["wall_s"]
    values = run["score"]["values"]
    lines = [
        f"### Load `{mode}`",
        "",
        LOAD_TEXT[mode].format(prompts=records // PER_PROMPT, records=records, tokens=tokens, clients=clients)
        + ".",
        "",
        "| system | wall s | tokens/s | vs `vhctl score` | p50 latency ms | p99 latency ms | max abs diff vs score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| `vhctl score` (one file, scoring time) | {run['score']['wall_s']:.2f} | {score_rate:,.0f} | 100 % | | | |",
    ]
    for key, label in (
        ("first", "`vhctl serve`, first run (defaults, no warm-up)"),
        ("second", "`vhctl serve`, second run"),
        ("baseline", "OpenRLHF-style per-request baseline"),
    ):
        rate = tokens / run[key]["wall_s"]
        lat = [x * 1000 for x in run[key]["latencies"]]
        diff = max(abs(a - b) for a, b in zip(run[key]["rewards"], values, strict=True))
        lines.append(
            f"| {label} | {run[key]['wall_s']:.2f} | {rate:,.0f} | {rate / score_rate:.0%} | "
            f"{statistics.median(lat):,.0f} | {percentile(lat, 0.99):,.0f} | {diff:.1e} |"
        )
    figures = {
        "first_over_second": run["first"]["wall_s"] / run["second"]["wall_s"],
        "second_vs_score": run["score"]["wall_s"] / run["second"]["wall_s"],
        "second_vs_baseline": run["baseline"]["wall_s"] / run["second"]["wall_s"],
        "max_diff": max(
            abs(a - b)
            for key in ("first", "second")
            for a, b in zip(run[key]["rewards"], values, strict=True)
        ),
    }
    f = figures
    lines += [
        "",
        f"- Target: `{mode}` load, first run at most 1.25x the second: **{f['first_over_second']:.2f}x**, "
        f"{'met' if f['first_over_second'] <= 1.25 else 'missed'}.",
        f"- Target: `{mode}` load, second run at least 0.8x `vhctl score`'s throughput: **{f['second_vs_score']:.2f}x**, "
        f"{'met' if f['second_vs_score'] >= 0.8 else 'missed'}.",
        f"- Target: `{mode}` load, second run at least 3x the per-request baseline: **{f['second_vs_baseline']:.2f}x**, "
        f"{'met' if f['second_vs_baseline'] >= 3 else 'missed'}.",
        f"- Target: `{mode}` load, rewards within 5e-5 of `vhctl score`: **{f['max_diff']:.1e}**, "
        f"{'met' if f['max_diff'] <= 5e-5 else 'missed'}.",
        "",
    ]
    return lines, figures


def report(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> str:
    """The markdown report of every load."""
    lines = [
        "# `vhctl serve` benchmark",
        "",
        f"Machine: {os.cpu_count()} cores, {common.THREADS} threads for every process, no OMP_WAIT_POLICY set "
        "by the benchmark (`vhctl serve` sets PASSIVE for itself).",
        "",
        f"Model: {common.MODEL_LABEL.get(args.model, args.model)}, float32, CPU. Each load runs on a fresh "
        "`vhctl serve CKPT --port 0 --device cpu` (every other option its default: compile auto, the prefix "
        "cache on) twice; the second run finds the prompts of the first in the prefix cache when they fit "
        "in its budget. The baseline runs each load once (it keeps nothing between requests).",
        "",
    ]
    for mode, run in runs.items():
        lines += load_report(mode, run, args.clients)[0]
    lines += [
        "- Throughput: the records' tokens (vhctl's count) over the wall time from the first request to the "
        "last answer; for `vhctl score`, the scoring time of its summary line (the model load is left out "
        "everywhere). The clients run in the benchmark's own process, on the same cores as the servers.",
        "- Baseline: `benchmarks/serve_baseline.py` (Starlette on uvicorn; each request tokenised with "
        "`padding=True` and run alone through the same checkpoint's backbone and value head, in the handler).",
    ]
    return "\n".join(lines) + "\n"


def run_load(
    args: argparse.Namespace, ckpt: Path, mode: str, rows: list[tuple[str, str]], order: list[int]
) -> dict[str, Any]:
    """``vhctl score``, a fresh ``vhctl serve`` twice, and the baseline, on one load."""
    vhctl = str(Path(sys.executable).with_name("vhctl"))
    run: dict[str, Any] = {"score": run_score(ckpt, rows, args.batch_size)}
    print(f"{mode}: score {run['score']['wall_s']:.2f}s", flush=True)
    proc, url = start(
        [vhctl, "serve", str(ckpt), "--port", "0", "--device", "cpu"], r"ready: .* on (http://[0-9.:]+)"
    )
    try:
        for key in ("first", "second"):
            run[key] = asyncio.run(post_rows(url, rows, args.clients, mode, order))
            print(f"{mode}: serve {key} {run[key]['wall_s']:.2f}s", flush=True)
    finally:
        stop(proc)
    proc, url = start(
        [sys.executable, str(common.BENCH / "serve_baseline.py"), str(ckpt)], r"ready (http://[0-9.:]+)"
    )
    try:
        run["baseline"] = asyncio.run(post_rows(url, rows, args.clients, mode, order))
        print(f"{mode}: baseline {run['baseline']['wall_s']:.2f}s", flush=True)
    finally:
        stop(proc)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=48, help="prompts of the queue load")
    parser.add_argument(
        "--groups-per-client", type=int, default=2, help="groups per client of the groups load"
    )
    parser.add_argument("--loads", default="queue,groups")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(common.BENCH / "RESULTS-serve.md"))
    args = parser.parse_args(argv)
    recorder = common.Recorder("serve", [*common.CODE["scoring"], "vhctl/serve"], argv)
    ckpt = ensure_checkpoint(args.model)
    runs: dict[str, dict[str, Any]] = {}
    for mode in args.loads.split(","):
        if mode == "queue":
            rows, order = queue_workload(args.model, ckpt, args.prompts)
        else:
            rows = groups_workload(args.model, ckpt, args.clients * args.groups_per_client)
            order = list(range(len(rows)))
        runs[mode] = run_load(args, ckpt, mode, rows, order)
    text = report(args, runs)
    Path(args.out).write_text(text)
    figures = {mode: load_report(mode, run, args.clients)[1] for mode, run in runs.items()}
    raw = {
        mode: {key: {"wall_s": run[key]["wall_s"]} for key in ("score", "first", "second", "baseline")}
        for mode, run in runs.items()
    }
    recorder.write({"report_md": text, "figures": figures, "raw": raw})
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
