"""Bounded memory: peak RSS of ``vhctl score`` over 10k and 100k input lines.

``vhctl score`` streams (window by window), so its peak memory must not grow with the input: the
claim checked here is peak RSS at 100k lines within 10% of peak RSS at 10k lines. Each size runs in a
fresh ``python -m vhctl score`` process on the embedded tiny model (or --ckpt), reading a generated
file of mixed JSON Lines (text, prompt + response with repeated prompts, chat messages, plain lines,
ids); the peak RSS is the child's own ``ru_maxrss`` (``os.wait4``). The output is checked too: one
line per input line, in input order (ids), none lost or duplicated.

Usage:
    python benchmarks/score_rss.py                       # 10k and 100k lines, prints a table
    python benchmarks/score_rss.py --lines 1000 5000     # other sizes (the first is the baseline)
    python benchmarks/score_rss.py --json                # one JSON object on stdout

Exit status 1 when the largest run's peak RSS exceeds the first's by more than --tolerance (10%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 2**20


def write_input(path: Path, n: int, seed: int = 0) -> None:
    """``n`` lines, each with an id (its index), in the forms ``vhctl score`` reads."""
    rng = random.Random(seed)
    words = "the a value head critic reward policy token model batch stream line score".split()
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            form = i % 4
            text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 40)))
            if form == 0:
                obj: dict[str, Any] = {"id": i, "text": text}
            elif form == 1:
                obj = {
                    "id": i,
                    "prompt": f"question {i % 97}: {words[i % len(words)]}?",
                    "response": " " + text,
                }
            elif form == 2:
                obj = {
                    "id": i,
                    "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
                }
            else:
                obj = {"id": i, "text": text + " ünïcödé"}
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")


def make_checkpoint(folder: Path) -> Path:
    out = folder / "ck"
    subprocess.run(
        [sys.executable, "-m", "vhctl", "-q", "wrap", "vhctl:tiny", "--out", str(out), "--seed", "0"],
        check=True,
    )
    return out


def run_score(
    ckpt: Path, input_path: Path, output_path: Path, batch_size: int, threads: int
) -> dict[str, Any]:
    """One ``vhctl score`` process; its own peak RSS from ``wait4`` (ru_maxrss is in KiB on Linux)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    start = time.perf_counter()
    with open(output_path, "wb") as out, open(os.devnull, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vhctl",
                "-q",
                "score",
                str(ckpt),
                "--input",
                str(input_path),
                "--batch-size",
                str(batch_size),
                "--device",
                "cpu",
            ],
            stdout=out,
            stderr=err,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"vhctl score exited with {code} on {input_path}")
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_rss_bytes": usage.ru_maxrss * scale, "wall_s": wall}


def check_output(output_path: Path, n: int) -> None:
    """One result per input line, in order: the ids are 0..n-1, each once, each with a value."""
    count = 0
    with open(output_path, encoding="utf-8") as handle:
        for expected_id, line in enumerate(handle):
            record = json.loads(line)
            if record.get("id") != expected_id or not isinstance(record.get("value"), float):
                raise SystemExit(
                    f"output line {expected_id + 1} is {record}, expected id {expected_id} with a value"
                )
            count += 1
    if count != n:
        raise SystemExit(f"{count} output lines for {n} input lines")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--ckpt", type=Path, default=None, help="checkpoint to score with (default: wrap vhctl:tiny)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vhctl-score-rss-") as tmp:
        work = Path(tmp)
        ckpt = args.ckpt or make_checkpoint(work)
        for n in args.lines:
            input_path, output_path = work / f"in-{n}.jsonl", work / f"out-{n}.jsonl"
            write_input(input_path, n)
            run = run_score(ckpt, input_path, output_path, args.batch_size, args.threads)
            check_output(output_path, n)
            run.update(lines=n, input_bytes=input_path.stat().st_size)
            results.append(run)
            input_path.unlink()
            output_path.unlink()
    base = results[0]["peak_rss_bytes"]
    for run in results:
        run["ratio_to_first"] = run["peak_rss_bytes"] / base
    worst = max(run["ratio_to_first"] for run in results)
    ok = worst <= 1 + args.tolerance
    if args.json:
        print(json.dumps({"runs": results, "tolerance": args.tolerance, "ok": ok}, indent=2))
    else:
        print(
            f"{'lines':>9} {'input MiB':>10} {'peak RSS MiB':>13} {'vs first':>9} {'wall s':>8} {'lines/s':>9}"
        )
        for run in results:
            print(
                f"{run['lines']:>9,} {run['input_bytes'] / MIB:>10.1f} {run['peak_rss_bytes'] / MIB:>13.1f} "
                f"{run['ratio_to_first']:>9.3f} {run['wall_s']:>8.1f} {run['lines'] / run['wall_s']:>9,.0f}"
            )
        print(f"bounded memory (within {args.tolerance:.0%}): {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
