"""Parquet in and out of ``vhctl score`` against JSON Lines on the same rows (issue #25).

Builds N rows of short texts (ids and a second column kept as input columns), writes them as
Parquet and as JSON Lines, and runs, side by side and interleaved, ``vhctl score CKPT --input
rows.parquet --output out.parquet`` and ``vhctl score CKPT --input rows.jsonl > out.jsonl`` on the
built-in tiny model (wrapped once). Each run is a child process: its wall time and peak RSS
(``wait4``'s ru_maxrss) are recorded.

Reported: peak RSS of the Parquet path at the smaller and the larger row count (target: within
5 %: memory does not grow with the table), and the throughput ratio Parquet / JSON Lines at the
larger count (target >= 0.95: the table path costs nothing over the stream).

    python benchmarks/bench_tables.py --rows 10000 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, Recorder  # noqa: E402

WORK = WORK / "tables"
MEASURES = ["vhctl/io", "vhctl/scoring", "vhctl/cli"]
WORDS = "the a cat dog sat ran on under mat rug quickly slowly red blue big small".split()


def env() -> dict[str, str]:
    found = dict(os.environ)
    found.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    return found


def vhctl(*args: str, stdout: Any = subprocess.DEVNULL) -> tuple[float, int, float]:
    """Run ``vhctl ARGS`` in a child; its wall seconds, peak RSS in bytes and CPU seconds (user +
    system: less sensitive than wall time to other jobs on a shared machine)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "vhctl", "-q", *args], stdout=stdout, env=env())
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"vhctl {' '.join(args)} failed with exit code {child.returncode}")
    return elapsed, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def make_rows(count: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet, jsonl = WORK / f"rows-{count}.parquet", WORK / f"rows-{count}.jsonl"
    if parquet.exists() and jsonl.exists():
        return parquet, jsonl
    rng = random.Random(0)
    rows = [
        {
            "id": i,
            "source": f"gen-{i % 7}",
            "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))),
        }
        for i in range(count)
    ]
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=10_000)
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return parquet, jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    recorder = Recorder("tables", MEASURES)
    WORK.mkdir(parents=True, exist_ok=True)
    ckpt = WORK / "ckpt"
    if not ckpt.exists():
        vhctl("wrap", "vhctl:tiny", "--out", str(ckpt), "--init", "normal", "--seed", "0")
    common = ("--device", "cpu", "-b", str(args.batch_size))
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for count in args.rows:
        parquet, jsonl = make_rows(count)
        found: dict[str, list[dict[str, float]]] = {"parquet": [], "jsonl": []}
        for repeat in range(args.repeats):  # interleaved, alternating which goes first
            order = ("parquet", "jsonl") if repeat % 2 == 0 else ("jsonl", "parquet")
            for path in order:
                if path == "parquet":
                    seconds, rss, cpu = vhctl(
                        "score",
                        str(ckpt),
                        "--input",
                        str(parquet),
                        "--output",
                        str(WORK / "out.parquet"),
                        *common,
                    )
                else:
                    with open(WORK / "out.jsonl", "wb") as out:
                        seconds, rss, cpu = vhctl(
                            "score", str(ckpt), "--input", str(jsonl), *common, stdout=out
                        )
                found[path].append(
                    {
                        "seconds": seconds,
                        "cpu_seconds": cpu,
                        "peak_rss_bytes": rss,
                        "rows_per_s": count / seconds,
                    }
                )
                print(
                    f"{count} rows {path}: {seconds:.1f}s ({cpu:.1f} CPU s), peak RSS {rss / 2**20:.0f} MiB",
                    flush=True,
                )
        runs[str(count)] = found
    small, large = str(min(args.rows)), str(max(args.rows))
    rss = {n: statistics.median(r["peak_rss_bytes"] for r in runs[n]["parquet"]) for n in (small, large)}
    pairs = list(zip(runs[large]["parquet"], runs[large]["jsonl"], strict=True))
    ratios = [j["seconds"] / p["seconds"] for p, j in pairs]
    cpu_ratios = [j["cpu_seconds"] / p["cpu_seconds"] for p, j in pairs]
    summary = {
        "parquet_peak_rss_growth": rss[large] / rss[small] - 1,
        "parquet_peak_rss_mib": {n: rss[n] / 2**20 for n in rss},
        "throughput_ratio_parquet_over_jsonl": statistics.median(ratios),
        "throughput_ratios": ratios,
        "cpu_throughput_ratio_parquet_over_jsonl": statistics.median(cpu_ratios),
        "cpu_throughput_ratios": cpu_ratios,
        "targets": {"parquet_peak_rss_growth": "<= 0.05", "throughput_ratio_parquet_over_jsonl": ">= 0.95"},
    }
    recorder.write({"batch_size": args.batch_size, "rows": args.rows, "runs": runs, "summary": summary})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
