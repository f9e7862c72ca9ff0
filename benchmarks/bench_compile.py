"""``--compile``: eager against compiled scoring, in the same run, and the on-disk compile cache.

For each model (GPT-2 124M, the Llama-style 110M):

- **compile time**: the first compiled call of a warm-up input minus the same call once compiled.
  For GPT-2 it is measured in two child processes in a row on one fresh cache folder (the first
  start, with an empty cache, and the second start, with the first one's cache); the Llama-style
  model is compiled in this process on a fresh cache folder (its first start only);
- **mixed lengths** (workload 1 of bench_scoring: lengths uniform in 16..256, batch 16): vhctl eager
  and vhctl compiled, interleaved repetitions, each as a fraction of the model-shaped matmul rate
  timed beside it; the compiled rate is also given amortised over a 100k-line job (the first
  compile paid once);
- **best-of-8** (workload 2): TRL 1.12.0 as its users call it, vhctl eager and vhctl compiled.

    python benchmarks/bench_setup.py && python benchmarks/bench_compile.py
    python benchmarks/bench_compile.py --report-only   # rewrite RESULTS-compile.md from the last run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scoring as bs  # noqa: E402
import common  # noqa: E402

JOB_LINES = 100_000
CHILD_MARK = "COMPILE-START "


# ---------------------------------------------------------------------------------------------- engines


class Engine:
    """One vhctl ``Scorer`` kept across repetitions (its compiled graph too), fed JSON lines."""

    def __init__(self, model: Any, tokenizer: Any, compile_: str) -> None:
        from vhctl.scoring import Scorer

        self.scorer = Scorer(model, tokenizer, batch_size=16, compile=compile_)

    def score_jsonl(self, data: bytes) -> list[float]:
        from vhctl.io.records import iter_records

        return [r["value"] for r in self.scorer.score(iter_records(io.BytesIO(data)))]


def load(ckpt_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    from vhctl.modeling import load_checkpoint

    return load_checkpoint(str(ckpt_dir)).eval(), AutoTokenizer.from_pretrained(str(ckpt_dir))


def compile_seconds(
    model: Any, tokenizer: Any, warm: list[bytes]
) -> tuple[dict[str, float], dict[str, Engine]]:
    """Seconds the compile adds to the first calls (each warm-up input of two rows, once compiled and
    once eager, the compiled one run again), and the engines."""
    eager, compiled = Engine(model, tokenizer, "off"), Engine(model, tokenizer, "on")
    timings = {"first": 0.0, "again": 0.0, "eager": 0.0}
    for data in warm:
        eager.score_jsonl(data)
        for key, engine in (("eager", eager), ("first", compiled), ("again", compiled)):
            start = time.perf_counter()
            engine.score_jsonl(data)
            timings[key] += time.perf_counter() - start
    if not compiled.scorer.compiled:
        raise RuntimeError("the compile failed: see the warning above")
    seconds = {"compile_s": timings["first"] - timings["again"], "first_calls_s": timings["first"],
               "compiled_calls_s": timings["again"], "eager_calls_s": timings["eager"]}  # fmt: skip
    return seconds, {"eager": eager, "compiled": compiled}


def warm_input(name: str, vocab: int) -> list[bytes]:
    """Two batches of two rows: one with padding, one without (the scorer pads it one bucket more, so
    that both run on the same graph)."""
    seqs = bs.mixed_workload(name, vocab, 2, seed=99, low=80, high=80)
    n_special = len(common.special_tokens(name)["prefix"])
    padded = [seqs[0][:50], seqs[1][:30]]
    even = [seqs[0][: 64 - n_special], seqs[1][: 64 - n_special]]  # 64 tokens each: no padding
    return [bs.jsonl_mixed(padded), bs.jsonl_mixed(even)]


# ---------------------------------------------------------------------------------------------- children


def child(name: str) -> int:
    """One process start: load, compile (cache folder from the environment), print the seconds."""
    common.set_threads()
    started = time.perf_counter()
    model, tokenizer = load(common.WORK / "ckpt" / name)
    loaded = time.perf_counter() - started
    out, _ = compile_seconds(model, tokenizer, warm_input(name, model.pretrained_model.config.vocab_size))
    out["load_s"] = loaded
    print(CHILD_MARK + json.dumps(out), flush=True)
    return 0


def cache_starts(name: str, cache: Path) -> dict[str, Any]:
    """The first start (empty cache folder) and the second (the first one's cache), as child processes."""
    shutil.rmtree(cache, ignore_errors=True)
    env = {**common.thread_env(), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    starts = []
    for label in ("first", "second"):
        done = subprocess.run([sys.executable, __file__, "--child", name], env=env, capture_output=True,
                              text=True, timeout=1800, check=False)  # fmt: skip
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith(CHILD_MARK)), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"compile child failed ({done.returncode}):\n{done.stderr[-3000:]}")
        starts.append(json.loads(line[len(CHILD_MARK) :]))
        print(f"  {name} {label} start: compile {starts[-1]['compile_s']:.1f} s, load {starts[-1]['load_s']:.1f} s, "
              f"load avg {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    return {"first": starts[0], "second": starts[1], "ratio": starts[1]["compile_s"] / starts[0]["compile_s"]}


# ---------------------------------------------------------------------------------------------- runs


def interleaved(label: str, blocks: list[dict[str, Any]], engines: list[str], config: Any,
                mm_tokens: int) -> dict[str, Any]:  # fmt: skip
    """Each block once per engine, the order rotating per block; a matmul rate timed after each block."""
    rates: dict[str, list[float]] = {e: [] for e in engines}
    fractions: dict[str, list[float]] = {e: [] for e in engines}
    values: dict[str, list[float]] = {e: [] for e in engines}
    cpu_rates: dict[str, list[float]] = {
        e: [] for e in engines
    }  # per process CPU second: less load-sensitive
    for i, block in enumerate(blocks):
        order = engines[i % len(engines) :] + engines[: i % len(engines)]
        seconds = {}
        for engine in order:
            start, cpu = time.perf_counter(), time.process_time()
            values[engine] += block[engine]()
            seconds[engine] = time.perf_counter() - start
            cpu_rates[engine].append(block["tokens"] / (time.process_time() - cpu))
        mm = bs.matmul_rate(config, tokens=mm_tokens, reps=3)["tokens_per_s"]
        line = f"  [{label} block {i + 1}/{len(blocks)}] {block['tokens']} tokens:"
        for engine in engines:
            rate = block["tokens"] / seconds[engine]
            rates[engine].append(rate)
            fractions[engine].append(rate / mm)
            line += f" {engine} {rate:.0f} tok/s ({100 * rate / mm:.0f} %)"
        print(line + f", matmul {mm:.0f} tok/s, load {os.getloadavg()[0]:.1f}", flush=True)
    out: dict[str, Any] = {"blocks": len(blocks), "tokens": sum(b["tokens"] for b in blocks)}
    for engine in engines:
        out[engine] = {"tok_s": common.median_range(rates[engine]),
                       "of_matmul": common.median_range(fractions[engine]),
                       "tok_per_cpu_s": common.median_range(cpu_rates[engine])}  # fmt: skip
    first = engines[0]
    out["max_abs_diff"] = {e: bs.max_abs_diff(values[first], values[e]) for e in engines[1:]}
    return out


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoConfig

    base_dir, ckpt_dir = common.WORK / "models" / name, common.WORK / "ckpt" / name
    config = AutoConfig.from_pretrained(str(base_dir))
    cache = common.WORK / "inductor" / name
    out: dict[str, Any] = {"model": name, "label": common.MODEL_LABEL.get(name, name)}
    if name in args.cache_models.split(","):
        out["cache"] = cache_starts(name, cache)  # leaves the cache warm for this process
    else:
        shutil.rmtree(cache, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    model, tokenizer = load(ckpt_dir)
    out["this_process"], engines = compile_seconds(model, tokenizer, warm_input(name, config.vocab_size))
    first = out["cache"]["first"]["compile_s"] if "cache" in out else out["this_process"]["compile_s"]
    out["compile_first_s"] = first
    print(f"  {name}: compile {first:.1f} s (first start), {out['this_process']['compile_s']:.1f} s in this "
          "process", flush=True)  # fmt: skip
    n_special = len(common.special_tokens(name)["prefix"])

    seqs = bs.mixed_workload(name, config.vocab_size, args.texts)
    real = [len(s) + n_special for s in seqs]
    blocks = []
    for lo, hi in bs._blocks(len(seqs), args.blocks):  # noqa: SLF001
        data = bs.jsonl_mixed(seqs[lo:hi])
        blocks.append(
            {
                "tokens": sum(real[lo:hi]),
                **{k: (lambda e=e, d=data: e.score_jsonl(d)) for k, e in engines.items()},
            }
        )
    mixed = interleaved(f"{name} mixed", blocks, ["eager", "compiled"], config, args.mm_tokens)
    mean_tokens = sum(real) / len(real)
    job_tokens = JOB_LINES * mean_tokens
    rate = mixed["compiled"]["tok_s"]["median"]
    amortised = job_tokens / (job_tokens / rate + first)
    mixed["amortised_100k"] = {"lines": JOB_LINES, "mean_tokens": mean_tokens, "tok_s": amortised,
                               "of_matmul": amortised / rate * mixed["compiled"]["of_matmul"]["median"]}  # fmt: skip
    out["mixed"] = mixed

    if args.prompts:
        trl = bs.TrlEngine(base_dir, ckpt_dir)
        rows = bs.best_of_n_workload(name, config.vocab_size, args.prompts, 8)
        blocks = []
        for lo, hi in bs._blocks(args.prompts, args.blocks):  # noqa: SLF001
            part = rows[lo * 8 : hi * 8]
            pairs = [(common.words(p), " " + common.words(r)) for p, r in part]
            data = bs.jsonl_best_of_n(part)
            block = {"tokens": sum(len(p) + len(r) + n_special for p, r in part),
                     "trl": lambda pairs=pairs: trl.score_pairs(pairs)}  # fmt: skip
            block.update({k: (lambda e=e, d=data: e.score_jsonl(d)) for k, e in engines.items()})
            blocks.append(block)
        trl.score_pairs([(common.words(p), " " + common.words(r)) for p, r in rows[:16]])  # warm-up
        best = interleaved(f"{name} best-of-8", blocks, ["trl", "eager", "compiled"], config, args.mm_tokens)
        for engine in ("eager", "compiled"):
            best[f"{engine}_vs_trl"] = best[engine]["tok_s"]["median"] / best["trl"]["tok_s"]["median"]
        out["best_of_8"] = best
    return out


# ---------------------------------------------------------------------------------------------- report


def pct(stat: dict[str, float]) -> str:
    return common.fmt_mr({k: (100 * v if k != "n" else v) for k, v in stat.items()}, unit=" %")


def cpu_ratio(run: dict[str, Any]) -> str:
    """Compiled over eager tokens per process CPU second (absent from runs before it was measured)."""
    if "tok_per_cpu_s" not in run["eager"]:
        return "n/a"
    return f"{run['compiled']['tok_per_cpu_s']['median'] / run['eager']['tok_per_cpu_s']['median']:.2f}x"


def report(result: dict[str, Any], command: str) -> str:
    machine = result["machine"]
    lines = [
        "# vhctl benchmarks: `--compile` (eager against compiled, same run)", "",
        f"Command: `{command}` ({result['elapsed_s'] / 60:.0f} min). Machine: {machine['cpu']}, "
        f"{result['threads']} threads, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"trl {machine['trl']}; {common.load_note(result['load_start'][0], result['load_end'][0])}.",
        "", "Rates are real tokens per second, median (min–max) over the blocks; \"of matmul\" divides each "
        "block's rate by the model-shaped fp32 matmul rate timed right after it (bench_scoring's measure).", "",
        "## Mixed lengths (16..256 tokens, batch 16)", "",
        "| model | eager tok/s | eager of matmul | compiled tok/s | compiled of matmul | compile "
        "| compiled, amortised over 100k lines | compiled / eager, per CPU second | max abs diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for out in result["models"].values():
        m = out["mixed"]
        am = m["amortised_100k"]
        lines.append(
            f"| {out['label']} | {common.fmt_mr(m['eager']['tok_s'])} | {pct(m['eager']['of_matmul'])} | "
            f"{common.fmt_mr(m['compiled']['tok_s'])} | {pct(m['compiled']['of_matmul'])} | "
            f"{out['compile_first_s']:.0f} s{'' if 'cache' in out else ' ¹'} | {am['tok_s']:.0f} tok/s ({100 * am['of_matmul']:.0f} % of matmul; "
            f"{am['lines']} lines of {am['mean_tokens']:.0f} tokens) | {cpu_ratio(m)} | "
            f"{m['max_abs_diff']['compiled']:.1e} |"
        )  # fmt: skip
    lines += ["", "Compile: the first start of a fresh process on an empty cache folder (see the cache table); "
              "¹ an empty cache folder, in a process that had compiled another model before (inductor's own "
              "warm-up already done, so less than a fresh process would take). Amortised: the compiled rate "
              "with that compile paid once over 100k lines of the workload's mean length."]  # fmt: skip
    if any("best_of_8" in out for out in result["models"].values()):
        lines += ["", "## Best-of-8 (prompts of 96..160 tokens, responses of 16..64; prefix sharing on)", "",
                  "| model | TRL tok/s | vhctl eager tok/s | vs TRL | vhctl compiled tok/s | vs TRL | max abs diff (TRL) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for out in result["models"].values():
            if "best_of_8" not in out:
                continue
            b = out["best_of_8"]
            lines.append(
                f"| {out['label']} | {common.fmt_mr(b['trl']['tok_s'])} | {common.fmt_mr(b['eager']['tok_s'])} | "
                f"{b['eager_vs_trl']:.2f}x | {common.fmt_mr(b['compiled']['tok_s'])} | {b['compiled_vs_trl']:.2f}x | "
                f"{max(b['max_abs_diff'].values()):.1e} |"
            )  # fmt: skip
    caches = [(out["label"], out["cache"]) for out in result["models"].values() if "cache" in out]
    if caches:
        lines += ["", "## The compile cache (two processes in a row, one cache folder)", "",
                  "| model | first start: compile | second start: compile | second / first |",
                  "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for label, c in caches:
            lines.append(f"| {label} | {c['first']['compile_s']:.1f} s | {c['second']['compile_s']:.1f} s | "
                         f"{100 * c['ratio']:.0f} % |")  # fmt: skip
    lines += [
        "",
        "## Targets (issue #18)",
        "",
        "| target | measured | verdict | why |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {t} | {m} | {v} | {w} |" for t, m, v, w in targets(result)]
    return "\n".join(lines) + "\n"


def targets(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Each target of #18 with its measured figure, met or missed, and for a miss the figures that say why."""
    rows: list[tuple[str, str, str, str]] = []
    for out in result["models"].values():
        m = out["mixed"]
        eager, compiled = m["eager"]["of_matmul"]["median"], m["compiled"]["of_matmul"]["median"]
        gain = m["compiled"]["tok_s"]["median"] / m["eager"]["tok_s"]["median"]
        why = (
            f"compiled runs {gain:.2f}x eager; eager is already at {100 * eager:.0f} % of the matmul rate (no LM "
            "head, fused GELU): what is left is in the matmuls themselves, which a compile does not speed up (the "
            "profile in docs/performance.md)"
        )
        rows.append((f"mixed, {out['label']}: compiled >= 90 % of the matmul rate", f"{100 * compiled:.0f} %",
                     "met" if compiled >= 0.9 else "**missed**", "" if compiled >= 0.9 else why))  # fmt: skip
        if "best_of_8" in out:
            b = out["best_of_8"]
            why = (
                f"eager is {b['eager_vs_trl']:.2f}x TRL and the compile adds "
                f"{b['compiled_vs_trl'] / b['eager_vs_trl']:.2f}x"
            )
            met = b["compiled_vs_trl"] >= 5
            rows.append((f"best-of-8, {out['label']}: compiled >= 5x TRL 1.12.0", f"{b['compiled_vs_trl']:.2f}x",
                         "met" if met else "**missed**", "" if met else why))  # fmt: skip
        if "cache" in out:
            c = out["cache"]
            met = c["ratio"] <= 0.2
            rows.append((f"compile cache, {out['label']}: second start <= 20 % of the first's compile",
                         f"{100 * c['ratio']:.0f} % ({c['second']['compile_s']:.1f} s of {c['first']['compile_s']:.1f} s)",
                         "met" if met else "**missed**",
                         "" if met else "what the second start still pays is dynamo tracing the blocks again "
                         "(inductor's compiled code comes from the cache)"))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument(
        "--cache-models", default="gpt2", help="models whose first and second start are timed"
    )
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=64, help="best-of-8 prompts (0: skip best-of-8)")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--mm-tokens", type=int, default=2048)
    parser.add_argument("--out", default=str(common.BENCH / "RESULTS-compile.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    command = "python benchmarks/bench_compile.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    if args.report_only:
        result = common.load_result("compile")
    else:
        recorder = common.Recorder("compile", common.CODE["scoring"], argv)
        common.set_threads()
        started = time.perf_counter()
        result = {"args": vars(args), "threads": common.THREADS, "load_start": list(os.getloadavg()),
                  "machine": common.machine_info(), "models": {}}  # fmt: skip
        for name in args.models.split(","):
            print(f"compile: {name}", flush=True)
            result["models"][name] = run_model(name, args)
        result["load_end"] = list(os.getloadavg())
        result["elapsed_s"] = time.perf_counter() - started
        result["command"] = command
        common.save_result("compile", result)
        recorder.write({**result, "report_md": report(result, command)})
    Path(args.out).write_text(report(result, result.get("command", command)), encoding="utf-8")
    print(Path(args.out).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
