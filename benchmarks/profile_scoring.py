"""Where eager scoring spends its CPU time: ``torch.profiler`` over vhctl's scorer (issue #26).

    python benchmarks/profile_scoring.py [--models gpt2,llama] [--texts 64] [--batch-size 16]

Scores the first ``--texts`` texts of workload 1 (mixed lengths 16..256, seed 1234) with the path
``vhctl score`` runs (``load_checkpoint`` + ``Scorer``, eager, 2 threads) on the benchmark models
(built by ``bench_setup.py`` under ``_work/``), once to warm up and once under the profiler, and
sorts the operators' self CPU time into matmuls (``addmm``, ``mm``, ``bmm``), attention
(``scaled_dot_product_attention`` and its kernels) and everything else. The shares say whether the
eager forward is matmul-bound, i.e. how much a compiler could fuse at most. The result goes to
``benchmarks/results/profile-scoring.json``, with each operator's self time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scoring  # noqa: E402
import common  # noqa: E402

MATMUL = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")
ATTENTION = (
    "attention"  # aten::scaled_dot_product_attention, _scaled_dot_product_flash_attention_for_cpu, ...
)
# An eager forward counts as matmul-bound when the matmuls take at least this share of the operators' time.
MATMUL_BOUND = 0.75


def category(name: str) -> str:
    if name in MATMUL:
        return "matmul"
    if ATTENTION in name:
        return "attention"
    return "other"


def profile_model(name: str, texts: int, batch_size: int) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig

    base_dir, ckpt_dir = common.WORK / "models" / name, common.WORK / "ckpt" / name
    vocab = AutoConfig.from_pretrained(str(base_dir)).vocab_size
    seqs = bench_scoring.mixed_workload(name, vocab, texts)
    data = bench_scoring.jsonl_mixed(seqs)
    engine = bench_scoring.VhctlEngine(ckpt_dir, batch_size=batch_size)
    engine.score_jsonl(data)  # warm-up: first-call allocations and lazy imports stay out of the profile
    start = time.perf_counter()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.score_jsonl(data)
    wall = time.perf_counter() - start
    ops = {
        e.key: {"self_cpu_us": float(e.self_cpu_time_total), "calls": int(e.count)}
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    }
    total = sum(o["self_cpu_us"] for o in ops.values())
    shares = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for key, op in ops.items():
        shares[category(key)] += op["self_cpu_us"] / total
    return {
        "label": common.MODEL_LABEL.get(name, name),
        "texts": texts,
        "tokens": sum(len(s) for s in seqs),
        "batch_size": batch_size,
        "profiled_wall_s": wall,
        "ops_self_cpu_us_total": total,
        "shares": shares,
        "matmul_bound": shares["matmul"] >= MATMUL_BOUND,
        "ops": ops,  # the result file sorts its keys by name; the report sorts them by time
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    recorder = common.Recorder("profile-scoring", common.CODE["scoring"], argv)
    common.set_threads()
    models = {}
    for name in args.models.split(","):
        models[name] = profile_model(name, args.texts, args.batch_size)
        s = models[name]["shares"]
        print(
            f"  {name}: matmul {s['matmul']:.0%}, attention {s['attention']:.0%}, other {s['other']:.0%}",
            flush=True,
        )
    recorder.write({"models": models, "matmul_bound_share": MATMUL_BOUND, "categories": {
        "matmul": list(MATMUL), "attention": f"operators whose name contains {ATTENTION!r}", "other": "the rest"}})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
