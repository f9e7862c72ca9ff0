"""``vhctl serve`` under load: 16 concurrent clients posting best-of-8 groups of workload 2, one response
per request, exactly as OpenRLHF's remote reward client posts them (``{"query": [prompt + response],
"prompts": [prompt], "labels": [null]}`` to ``/get_reward``).

Compared in the same run, on the same records and model, each with the same threads:

- ``vhctl score`` on the same records read from one JSONL file (its scoring time, from its summary line:
  the model load is left out for every system);
- ``vhctl serve`` (one server process on the CPU);
- the OpenRLHF-style baseline of ``serve_baseline.py`` (every request its own padded batch, in the
  handler, nothing batched across requests).

Every process gets the same threads and ``OMP_WAIT_POLICY`` (PASSIVE unless set). Each client takes its groups in turn and posts a group's 8 responses at once (as a trainer's rollout
sends its samples), then the next group. Throughput counts the records' tokens (vhctl's count) over the
wall time from the first request to the last answer; latency is per request. Values: the largest
difference between the servers' rewards and ``vhctl score``'s values.

    python benchmarks/bench_serve.py --reps 3            # GPT-2 124M, 16 clients x 2 groups, 3 rotations
    python benchmarks/bench_serve.py --groups-per-client 8 --model llama
    python benchmarks/bench_serve.py --model gpt2-small-test --groups-per-client 1   # harness check

Writes benchmarks/RESULTS-serve.md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


def workload(name: str, ckpt: Path, groups: int) -> list[tuple[str, str]]:
    """Workload 2 of bench_scoring: (prompt, response) texts, 8 responses per prompt."""
    config = json.loads((ckpt / "config.json").read_text())
    rows = best_of_n_workload(name, config["vocab_size"], groups, PER_PROMPT)
    return [(common.words(p), " " + common.words(r)) for p, r in rows]


def env() -> dict[str, str]:
    """Every system runs with the same threads and OpenMP wait policy (``vhctl serve``'s default, PASSIVE:
    spinning OpenMP threads starve the other threads of a busy CPU), so the ratios measure the designs."""
    return {**common.thread_env(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


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


async def load(url: str, rows: list[tuple[str, str]], clients: int) -> dict[str, Any]:
    """``clients`` concurrent clients, each posting its groups' responses one request each."""
    import httpx

    groups = [rows[i : i + PER_PROMPT] for i in range(0, len(rows), PER_PROMPT)]
    rewards: dict[int, float] = {}
    latencies: list[float] = []
    limits = httpx.Limits(
        max_connections=clients * PER_PROMPT, max_keepalive_connections=clients * PER_PROMPT
    )

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def one(index: int, prompt: str, response: str) -> None:
            body = {"query": [prompt + response], "prompts": [prompt], "labels": [None]}
            began = time.perf_counter()
            answer = await http.post(f"{url}/get_reward", json=body)
            latencies.append(time.perf_counter() - began)
            answer.raise_for_status()
            rewards[index] = answer.json()["rewards"][0]

        async def client(mine: list[int]) -> None:
            for g in mine:
                await asyncio.gather(*(one(g * PER_PROMPT + k, p, r) for k, (p, r) in enumerate(groups[g])))

        await one(-1, *rows[0])  # warm-up request, not timed
        latencies.clear()
        began = time.perf_counter()
        await asyncio.gather(*(client(list(range(c, len(groups), clients))) for c in range(clients)))
        wall = time.perf_counter() - began
    rewards.pop(-1)
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


def report(
    args: argparse.Namespace, reps: list[dict[str, Any]], tokens: int, records: int, load_avg: list[float]
) -> str:
    """The markdown: medians over the repetitions (per-repetition ratios listed below the table)."""
    wall = {
        key: statistics.median(rep[key]["wall_s"] for rep in reps) for key in ("score", "serve", "baseline")
    }
    score_rate = tokens / wall["score"]
    lines = [
        "# `vhctl serve` benchmark",
        "",
        f"Machine: {os.cpu_count()} cores, {common.THREADS} threads and OMP_WAIT_POLICY={env()['OMP_WAIT_POLICY']} "
        f"for every process, {len(reps)} repetition(s); {common.load_note(load_avg[0], load_avg[1])}.",
        "",
        f"Command: `python benchmarks/bench_serve.py --model {args.model} --clients {args.clients} "
        f"--groups-per-client {args.groups_per_client} --reps {args.reps}`",
        "",
        f"Model: {common.MODEL_LABEL.get(args.model, args.model)}, float32, CPU. Workload 2 (best-of-n): "
        f"{records // PER_PROMPT} prompts of 96..160 tokens x {PER_PROMPT} responses of 16..64 tokens = {records} "
        f"records, {tokens} tokens. Servers: {args.clients} concurrent clients, each posting a group's "
        f"{PER_PROMPT} responses as {PER_PROMPT} requests at once (OpenRLHF's `/get_reward` body), then its next "
        "group. Medians over the repetitions (the order of the three systems rotates).",
        "",
        "| system | wall s | tokens/s | vs `vhctl score` | p50 latency ms | p99 latency ms | max abs diff vs score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| `vhctl score` (one file, scoring time) | {wall['score']:.2f} | {score_rate:,.0f} | 100 % | | | |",
    ]
    values = reps[0]["score"]["values"]
    for key, label in (("serve", "`vhctl serve`"), ("baseline", "OpenRLHF-style baseline")):
        rate = tokens / wall[key]
        lat = [x * 1000 for rep in reps for x in rep[key]["latencies"]]
        diff = max(abs(a - b) for rep in reps for a, b in zip(rep[key]["rewards"], values, strict=True))
        lines.append(
            f"| {label} | {wall[key]:.2f} | {rate:,.0f} | {rate / score_rate:.0%} | "
            f"{statistics.median(lat):,.0f} | {percentile(lat, 0.99):,.0f} | {diff:.1e} |"
        )
    ratio, speedup = wall["score"] / wall["serve"], wall["baseline"] / wall["serve"]
    per_rep = ", ".join(
        f"{rep['score']['wall_s'] / rep['serve']['wall_s']:.0%} / "
        f"{rep['baseline']['wall_s'] / rep['serve']['wall_s']:.1f}x"
        for rep in reps
    )
    lines += [
        "",
        f"- Target: throughput at least 80 % of `vhctl score`: **{ratio:.0%}**, {'met' if ratio >= 0.8 else 'missed'}.",
        f"- Target: at least 3x the OpenRLHF-style baseline: **{speedup:.1f}x**, "
        f"{'met' if speedup >= 3 else 'missed'}.",
        f"- Per repetition (vs score / vs baseline): {per_rep}.",
        "- Throughput: the records' tokens (vhctl's count) over the wall time from the first request to the "
        "last answer; for `vhctl score`, the scoring time of its summary line (the model load is left out "
        "everywhere). The clients run in the benchmark's own process, on the same cores as the servers.",
        "- Baseline: `benchmarks/serve_baseline.py` (Starlette on uvicorn; each request tokenised with "
        "`padding=True` and run alone through the same checkpoint's backbone and value head, in the handler).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--groups-per-client", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1, help="repetitions, the order of the systems rotating")
    parser.add_argument("--out", default=str(common.BENCH / "RESULTS-serve.md"))
    args = parser.parse_args(argv)
    start_load = os.getloadavg()
    ckpt = ensure_checkpoint(args.model)
    rows = workload(args.model, ckpt, args.clients * args.groups_per_client)
    vhctl = str(Path(sys.executable).with_name("vhctl"))
    procs = {
        "serve": start(
            [vhctl, "serve", str(ckpt), "--port", "0", "--device", "cpu", "-b", str(args.batch_size)],
            r"ready: .* on (http://[0-9.:]+)",
        ),
        "baseline": start(
            [sys.executable, str(common.BENCH / "serve_baseline.py"), str(ckpt)], r"ready (http://[0-9.:]+)"
        ),
    }  # both idle while the others run
    reps: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            order = ["score", "serve", "baseline"]
            order = order[rep % 3 :] + order[: rep % 3]
            results: dict[str, Any] = {}
            for key in order:
                if key == "score":
                    results[key] = run_score(ckpt, rows, args.batch_size)
                else:
                    results[key] = asyncio.run(load(procs[key][1], rows, args.clients))
                print(f"rep {rep + 1}: {key} {results[key]['wall_s']:.2f}s", flush=True)
            reps.append(results)
    finally:
        for proc, _ in procs.values():
            stop(proc)
    text = report(args, reps, reps[0]["score"]["tokens"], len(rows), [start_load[0], os.getloadavg()[0]])
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
