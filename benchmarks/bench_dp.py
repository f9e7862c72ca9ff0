"""Data-parallel scoring: 2 processes x 1 thread (torchrun, gloo) against 1 process x 2 threads.

Standalone (not part of ``run.sh``): builds its own models and checkpoints under
``benchmarks/_work/dp/``, runs ``vhctl score`` end to end as users run it, prints a markdown table
and writes it to ``benchmarks/RESULTS-dp.md``.

Workload (the scoring workload of the performance benchmarks): 512 texts whose token lengths are
uniform in 16..256 (seed 1234), as ``{"id", "text"}`` JSON lines, batch size 16. Models, built from
configs with random weights (seed 0): GPT-2 124M (``GPT2Config()``) and a Llama-style 110M (hidden
768, 12 layers, 12 heads, intermediate 2048, vocab 32000, tied embeddings), each with a word-level
tokenizer (``w123`` is token 123), so token lengths are exact.

Runs, per model, in this order (each one a fresh ``vhctl score`` command):

- ``1 x 2``: ``python -m vhctl score`` with 2 threads (``OMP_NUM_THREADS=2``);
- ``2 x 1``: ``torchrun --standalone --nproc-per-node 2 -m vhctl score`` with 1 thread per process;
- ``1 x 1``: one process, one thread: the reference the ``2 x 1`` output must equal byte for byte.

Timings: *scoring* tok/s is from the summary line ``vhctl score`` prints (time from the first
record read to the last result written, rank 0's clock), *end to end* is the command's wall time
(interpreter and torch start, model load, scoring).

Usage::

    python benchmarks/bench_dp.py                 # full run (about 15 min on 2 cores)
    python benchmarks/bench_dp.py --quick         # a 2-layer model, 64 texts: checks the harness
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
from common import build_tokenizer, special_tokens  # noqa: E402  (same tokenizers as the main benchmark)

WORK = ROOT / "benchmarks" / "_work" / "dp"
RESULTS = ROOT / "benchmarks" / "RESULTS-dp.md"
LABEL = {"gpt2": "GPT-2 124M", "llama": "Llama-style 110M", "tiny-gpt2": "GPT-2 2-layer (quick)"}
SUMMARY = re.compile(r"scored (\d+) line\(s\), (\d+) tokens in ([0-9.]+)s")


# ---------------------------------------------------------------------------------------------- models


def model_config(name: str) -> Any:
    if name == "gpt2":
        from transformers import GPT2Config

        return GPT2Config()
    if name == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
            intermediate_size=2048, vocab_size=32000, tie_word_embeddings=True, max_position_embeddings=2048,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )  # fmt: skip
    if name == "tiny-gpt2":
        from transformers import GPT2Config

        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512)
    raise ValueError(f"unknown model {name!r}")


def checkpoint(name: str) -> Path:
    """The model built from its config (seed 0) and wrapped as a vhctl checkpoint, once."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    base, ckpt = WORK / "models" / name, WORK / "ckpt" / name
    stamp = {"model": name, "transformers": transformers.__version__, "seed": 0}
    stamp_file = ckpt.parent / f"{name}.stamp.json"
    if (
        stamp_file.is_file()
        and json.loads(stamp_file.read_text()) == stamp
        and (ckpt / "vhctl.json").is_file()
    ):
        return ckpt
    print(f"building {LABEL[name]} (random weights, seed 0)", flush=True)
    config = model_config(name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    base.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(base))
    build_tokenizer(name, config.vocab_size).save_pretrained(str(base))
    vhctl = [
        sys.executable,
        "-m",
        "vhctl",
        "-q",
        "wrap",
        str(base),
        "--out",
        str(ckpt),
        "--seed",
        "0",
        "--force",
    ]
    subprocess.run(vhctl, check=True, env=env_for(1))
    stamp_file.write_text(json.dumps(stamp))
    return ckpt


def workload(name: str, vocab: int, n: int, seed: int = 1234) -> bytes:
    """``n`` JSON lines of texts whose token lengths (special tokens included) are uniform in 16..256."""
    spec = special_tokens(name)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        length = rng.randint(16, 256) - len(spec["prefix"])
        text = " ".join(f"w{rng.randrange(spec['first_word'], vocab)}" for _ in range(length))
        lines.append(json.dumps({"id": i, "text": text}))
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------------------------- runs


def env_for(threads: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")
    }
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               PYTHONWARNINGS="ignore", NO_COLOR="1")  # fmt: skip
    return env


def torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def run(setup: str, ckpt: Path, source: Path, out: Path, batch_size: int) -> dict[str, Any]:
    """One ``vhctl score`` command; its output goes to ``out``."""
    procs, threads = {"1x2": (1, 2), "2x1": (2, 1), "1x1": (1, 1)}[setup]
    launcher = (
        [*torchrun(), "--standalone", "--nproc-per-node", str(procs)] if procs > 1 else [sys.executable]
    )
    command = [*launcher, "-m", "vhctl", "score", str(ckpt), "--input", str(source), "-b", str(batch_size)]
    started = time.perf_counter()
    with open(out, "wb") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.PIPE, env=env_for(threads))
    wall = time.perf_counter() - started
    err = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise SystemExit(f"{setup} failed ({done.returncode}):\n{err[-3000:]}")
    match = SUMMARY.search(err)
    if match is None:
        raise SystemExit(f"{setup}: no summary line in:\n{err[-3000:]}")
    lines, tokens, seconds = int(match[1]), int(match[2]), float(match[3])
    return {"setup": setup, "lines": lines, "tokens": tokens, "scoring_s": seconds, "wall_s": wall,
            "tok_s": tokens / seconds, "e2e_tok_s": tokens / wall}  # fmt: skip


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import transformers

    import vhctl

    version = getattr(vhctl, "__version__", "?")
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, vhctl {version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument("--n", type=int, default=512, help="texts in the workload")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1, help="repetitions, setups interleaved (medians)")
    parser.add_argument("--skip-single-thread", action="store_true", help="no 1 x 1 run (no byte check)")
    parser.add_argument("--quick", action="store_true", help="a 2-layer GPT-2 and 64 texts (harness check)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = ["tiny-gpt2"] if args.quick else args.models.split(",")
    n = 64 if args.quick else args.n
    out_file = WORK / "RESULTS-dp-quick.md" if args.quick and args.out == RESULTS else args.out
    WORK.mkdir(parents=True, exist_ok=True)
    setups = ["1x2", "2x1"] + ([] if args.skip_single_thread else ["1x1"])
    recorder = common.Recorder("dp", common.CODE["scoring"] + ["vhctl/cli", "vhctl/distributed.py"], argv)
    load_start = os.getloadavg()
    began = time.time()
    rows = []
    for name in names:
        ckpt = checkpoint(name)
        source = WORK / f"{name}-{n}.jsonl"
        source.write_bytes(workload(name, model_config(name).vocab_size, n))
        outputs: dict[str, bytes] = {}
        runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in setups}
        for rep in range(args.reps):
            order = setups[rep % len(setups) :] + setups[: rep % len(setups)]  # rotate who goes first
            for setup in order:
                print(f"{LABEL[name]}: {setup} (rep {rep + 1}/{args.reps}) ...", flush=True)
                target = WORK / f"{name}-{setup}.jsonl"
                result = run(setup, ckpt, source, target, args.batch_size)
                runs[setup].append(result)
                data = target.read_bytes()
                if setup in outputs and outputs[setup] != data:
                    raise SystemExit(f"{setup}: the output changed between repetitions")
                outputs[setup] = data
                print(f"  {result['tok_s']:.0f} tok/s scoring, {result['wall_s']:.1f} s wall", flush=True)
        rows.append((name, runs, outputs))
    load_end = os.getloadavg()

    table = [
        "| model | setup | scoring tok/s | scoring s | end to end s | 2 x 1 vs 1 x 2 (scoring) | output |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, runs, outputs in rows:
        base = statistics.median(r["tok_s"] for r in runs["1x2"])
        for setup in setups:
            rates = [r["tok_s"] for r in runs[setup]]
            speed = _spread([rate / base for rate in rates], "{:.2f}x") if setup == "2x1" else ""
            if setup == "2x1" and "1x1" in outputs:
                same = "byte-identical to 1 x 1" if outputs["2x1"] == outputs["1x1"] else "DIFFERS from 1 x 1"
            elif setup == "1x2" and "1x1" in outputs:
                same = (
                    "identical to 1 x 1"
                    if outputs["1x2"] == outputs["1x1"]
                    else _max_diff(outputs["1x2"], outputs["1x1"])
                )
            else:
                same = ""
            label = {"1x2": "1 process x 2 threads", "2x1": "2 processes x 1 thread (torchrun, gloo)",
                     "1x1": "1 process x 1 thread"}[setup]  # fmt: skip
            table.append(
                f"| {LABEL[name]} | {label} | {_spread(rates, '{:,.0f}')} "
                f"| {_spread([r['scoring_s'] for r in runs[setup]], '{:.1f}')} "
                f"| {_spread([r['wall_s'] for r in runs[setup]], '{:.1f}')} | {speed} | {same} |"
            )
    tokens = ", ".join(f"{LABEL[name]} {runs['1x2'][0]['tokens']:,}" for name, runs, _ in rows)
    reps = (
        f"{args.reps} repetition(s), setups interleaved; medians (min–max)"
        if args.reps > 1
        else "one run each"
    )
    command = (
        "python benchmarks/bench_dp.py"
        + (" --quick" if args.quick else "")
        + (f" --reps {args.reps}" if args.reps > 1 else "")
    )
    text = "\n".join(
        [
            "# Data-parallel scoring: 2 processes x 1 thread vs 1 process x 2 threads",
            "",
            f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(began))} "
            f"in {(time.time() - began) / 60:.1f} min ({reps}).",
            "",
            f"Machine: {machine()}. Load average at start {tuple(round(x, 2) for x in load_start)}, "
            f"at end {tuple(round(x, 2) for x in load_end)}.",
            "",
            f"Workload: {n} texts, token lengths uniform in 16..256 (seed 1234), `--batch-size {args.batch_size}`, "
            f"float32; tokens scored: {tokens}. Each row is one `vhctl score` command "
            "(1 x 2: `OMP_NUM_THREADS=2 python -m vhctl score`; 2 x 1: `OMP_NUM_THREADS=1 torchrun --standalone "
            "--nproc-per-node 2 -m vhctl score`; 1 x 1: `OMP_NUM_THREADS=1 python -m vhctl score`). Scoring tok/s "
            "is from vhctl's summary line (first record read to last result written); end to end is the "
            "command's wall time, model loading and interpreter start included (torchrun starts 3 interpreters).",
            "",
            *table,
            "",
        ]
    )
    out_file.write_text(text)
    if not args.quick:
        raw = {name: runs for name, runs, _ in rows}
        recorder.write({"runs": raw, "report_md": text})
    print()
    print(text)
    print(f"written to {out_file}")
    return 0


def _spread(values: list[float], fmt: str) -> str:
    """``median (min–max)``, or the value alone for one run."""
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _max_diff(a: bytes, b: bytes) -> str:
    """How far two outputs' values are apart (thread counts may change the last bits)."""
    worst = 0.0
    for x, y in zip(a.splitlines(), b.splitlines(), strict=True):
        worst = max(worst, abs(json.loads(x)["value"] - json.loads(y)["value"]))
    return f"values within {worst:.1e} of 1 x 1"


if __name__ == "__main__":
    raise SystemExit(main())
