"""Workload 5: start-up. ``vhctl --help`` wall time, and ``vhctl score`` from process start to its first
output line against TRL's import + load + first forward (same model, same input), interleaved."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scoring  # noqa: E402
import common  # noqa: E402


def until_first_line(cmd: list[str], timeout: float = 300) -> tuple[float, str]:
    """Seconds from spawning ``cmd`` to its first stdout line; the process is then left to finish."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=common.thread_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not line:
        raise RuntimeError(
            f"{' '.join(cmd)} printed nothing (exit {proc.returncode}):\n"
            f"{err.decode('utf-8', 'replace')[-2000:]}"
        )
    return elapsed, line.decode("utf-8", "replace").strip()


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=common.thread_env(), check=True
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--help-reps", type=int, default=7)
    parser.add_argument("--inputs", default="1,16", help="input sizes (lines) for the first-line timing")
    args = parser.parse_args(argv)
    recorder = common.Recorder("startup", common.CODE["startup"], argv)
    py = sys.executable
    vhctl_bin = str(Path(py).with_name("vhctl"))
    base = common.WORK / "models" / args.model
    ckpt = common.WORK / "ckpt" / args.model
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(str(base)).vocab_size
    seqs = bench_scoring.mixed_workload(args.model, vocab, 16)
    inputs = {}
    for n in [int(x) for x in args.inputs.split(",")]:
        path = common.WORK / f"first_{n}.jsonl"
        path.write_bytes(bench_scoring.jsonl_mixed(seqs[:n]))
        inputs[n] = path

    helps = {"vhctl --help": [], "python -c pass": [], "python -c 'import vhctl'": []}
    floors = {  # what any scorer built on them pays before its first line
        "import torch": "import torch",
        "import torch + transformers' model code": "import torch, transformers.modeling_utils, "
        "transformers.models.gpt2.modeling_gpt2",
    }
    wall([vhctl_bin, "--help"])  # warm the page cache
    for _ in range(args.help_reps):
        helps["vhctl --help"].append(wall([vhctl_bin, "--help"]))
        helps["python -c pass"].append(wall([py, "-c", "pass"]))
        helps["python -c 'import vhctl'"].append(wall([py, "-c", "import vhctl"]))
    floor_s: dict[str, list[float]] = {k: [] for k in floors}
    for _ in range(max(1, args.reps)):
        for label, code in floors.items():
            floor_s[label].append(wall([py, "-c", code]))
    print(
        "  [start-up] "
        + ", ".join(f"{k} {common.median_range(v)['median']:.3f} s" for k, v in helps.items())
        + "; "
        + ", ".join(f"{k} {common.median_range(v)['median']:.2f} s" for k, v in floor_s.items()),
        flush=True,
    )

    cli_ok = True
    try:
        until_first_line([vhctl_bin, "score", str(ckpt), "--input", str(inputs[1])])
    except (RuntimeError, subprocess.SubprocessError) as exc:
        cli_ok = False
        print(f"  [start-up] vhctl score is not usable: {str(exc).splitlines()[0]}", flush=True)
    first: dict[str, dict[str, list[float]]] = {}
    for n, path in inputs.items():
        cmds = {
            "trl": [py, str(common.BENCH / "first_line.py"), "trl", str(base), str(ckpt), str(path)],
            "vhctl-lib": [py, str(common.BENCH / "first_line.py"), "vhctl-lib", str(ckpt), str(path)],
        }
        if cli_ok:
            cmds["vhctl score"] = [vhctl_bin, "score", str(ckpt), "--input", str(path)]
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for rep in range(args.reps):
            order = list(cmds) if rep % 2 == 0 else list(reversed(cmds))
            for name in order:
                times[name].append(until_first_line(cmds[name])[0])
        print(
            f"  [first line, {n} input line(s)] "
            + ", ".join(f"{k} {common.median_range(v)['median']:.2f} s" for k, v in times.items()),
            flush=True,
        )
        first[str(n)] = times
    summary: dict[str, Any] = {
        "help": {k: common.median_range(v) for k, v in helps.items()},
        "cli_score_available": cli_ok,
        "import_floor": {k: common.median_range(v) for k, v in floor_s.items()},
        "first_line": {n: {k: common.median_range(v) for k, v in t.items()} for n, t in first.items()},
    }
    for n, t in first.items():
        who = "vhctl score" if "vhctl score" in t else "vhctl-lib"
        summary["first_line"][n]["ratio"] = common.median_range(
            [a / b for a, b in zip(t[who], t["trl"], strict=True)]
        )
        summary["first_line"][n]["ratio_of"] = who
    recorder.write({"model": args.model, "reps": args.reps, **summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
