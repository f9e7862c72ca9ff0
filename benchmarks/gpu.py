"""Workload 6: bf16 scoring throughput on a CUDA GPU, vhctl's Scorer against TRL's value-head model.

One script (no downloads; the workloads come from bench_scoring.py): it builds GPT-2 124M and a Llama-style 110M from
configs with random weights, runs correctness checks on CUDA, then times workloads 1 (mixed lengths) and 2
(best-of-n) scaled up, in bf16, interleaved repetitions, and writes a markdown table.

    python benchmarks/gpu.py                      # on a CUDA machine; table to $OUT/gpu.md or ./gpu-results.md
    python benchmarks/gpu.py --out FILE.md
    python benchmarks/gpu.py --dry-run            # tiny models and sizes on the CPU: checks that it all runs

Correctness checks (exit 1 when one fails): on CUDA in float32 with TF32 off, vhctl's values equal TRL's
within 1e-4 on a subset of each workload; in bf16 vhctl's error against the float32 values is no worse than
TRL's own bf16 error (x2 + 1e-2); every input gets one result, in order.

TRL is imported when installed (``trl.experimental.ppo``); otherwise the baseline is vhctl's own
``AutoModelForCausalLMWithValueHead.forward``, the drop-in of TRL's forward (the full LM with its LM head and
``output_hidden_states=True``, the head on ``hidden_states[-1]``): the same computation, so the same timing.
The table says which baseline ran.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
from bench_scoring import (  # noqa: E402  (the CPU benchmark's workloads, other sizes)
    best_of_n_workload,
    jsonl_best_of_n,
    jsonl_mixed,
    mixed_workload,
)

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- data


def build(name: str, tiny: bool, device: str) -> tuple[Any, Any, Any, str]:
    """The HF model (fp32, on ``device``), a vhctl wrapper and a TRL (or TRL-equivalent) wrapper around it."""
    import torch
    from transformers import AutoModelForCausalLM

    config = common.model_config(name)
    if tiny:
        for key, value in {"n_embd": 64, "n_layer": 2, "n_head": 4, "hidden_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128}.items():
            if hasattr(config, key):
                setattr(config, key, value)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config).to(device).eval()
    import vhctl

    vh = vhctl.AutoModelForCausalLMWithValueHead.from_pretrained(hf)
    try:
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as TrlClass

        trl = TrlClass.from_pretrained(hf)
        import trl as trl_pkg

        baseline = f"TRL {trl_pkg.__version__}"
    except ImportError:
        trl = vhctl.AutoModelForCausalLMWithValueHead.from_pretrained(hf)
        baseline = "TRL-equivalent forward (trl not installed: vhctl's drop-in forward, same computation)"
    with torch.no_grad():
        torch.manual_seed(1)
        weight = torch.randn(1, config.hidden_size) * 0.05
        for model in (vh, trl):
            model.v_head.summary.weight.copy_(weight)
            model.v_head.summary.bias.zero_()
            model.v_head.to(device)
            model.eval()
    return hf, vh, trl, baseline


class Runner:
    def __init__(self, name: str, vh: Any, trl: Any, device: str, batch: int) -> None:
        self.tok = common.build_tokenizer(name, vh.pretrained_model.config.vocab_size)
        self.vh, self.trl, self.device, self.batch = vh, trl, device, batch

    def trl_texts(self, texts: list[str]) -> list[float]:
        import torch

        out: list[float] = []
        for i in range(0, len(texts), self.batch):
            enc = self.tok(texts[i : i + self.batch], padding=True, return_tensors="pt")
            out.extend(self._trl_forward(enc["input_ids"], enc["attention_mask"]))
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    def trl_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(pairs), self.batch):
            ids = [self.tok(p)["input_ids"] + self.tok(r, add_special_tokens=False)["input_ids"]
                   for p, r in pairs[i : i + self.batch]]
            enc = self.tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
            out.extend(self._trl_forward(enc["input_ids"], enc["attention_mask"]))
        return out

    def _trl_forward(self, ids: Any, mask: Any) -> list[float]:
        import torch

        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            _, _, values = self.trl(input_ids=ids, attention_mask=mask)
        last = mask.sum(1) - 1
        return values[torch.arange(ids.shape[0], device=ids.device), last].float().cpu().tolist()

    def vhctl(self, data: bytes) -> list[float]:
        from vhctl.io.records import iter_records
        from vhctl.scoring import Scorer

        scorer = Scorer(self.vh, self.tok, batch_size=self.batch)
        return [r["value"] for r in scorer.score(iter_records(io.BytesIO(data)))]


def maxdiff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default $OUT/gpu.md or ./gpu-results.md)")
    parser.add_argument("--dry-run", action="store_true", help="tiny models and sizes, on the CPU unless CUDA is there")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument("--texts", type=int, default=4096, help="workload 1 texts (lengths uniform in 16..--max-len)")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=512, help="workload 2 prompts, each with 8 responses")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=270, help="stop adding repetitions past this")
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.dry_run
    if args.dry_run:
        args.texts, args.max_len, args.prompts, args.reps = 48, 96, 6, 2
    elif device == "cpu":
        print("no CUDA device: use --dry-run for the CPU smoke run (the full sizes take hours on a CPU)")
        return 2
    out_path = args.out or (Path(os.environ["OUT"]) / "gpu.md" if os.environ.get("OUT") else Path("gpu-results.md"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device == "cpu":
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    gpu_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    log(f"device {device} ({gpu_name}), torch {torch.__version__}")

    checks: list[tuple[str, bool, str]] = []
    rows: list[dict[str, Any]] = []
    baseline_used = ""
    for name in args.models.split(","):
        hf, vh, trl, baseline_used = build(name, tiny, device)
        runner = Runner(name, vh, trl, device, args.batch_size)
        vocab = hf.config.vocab_size
        seqs = mixed_workload(name, vocab, args.texts, seed=1, high=args.max_len)
        pairs_rows = best_of_n_workload(name, vocab, args.prompts, 8, seed=2)
        texts = [common.words(s) for s in seqs]
        pairs = [(common.words(p), " " + common.words(r)) for p, r in pairs_rows]
        data1, data2 = jsonl_mixed(seqs), jsonl_best_of_n(pairs_rows)

        # --- correctness in float32 (TF32 off) on subsets
        n1, n2 = min(len(seqs), 256), min(len(pairs), 256)
        ref1 = runner.trl_texts(texts[:n1])
        ref2 = runner.trl_pairs(pairs[:n2])
        got1 = runner.vhctl(jsonl_mixed(seqs[:n1]))
        got2 = runner.vhctl(jsonl_best_of_n(pairs_rows[:n2]))
        d1, d2 = maxdiff(ref1, got1), maxdiff(ref2, got2)
        checks.append((f"{name} fp32 mixed: max|vhctl-TRL| = {d1:.1e} <= 1e-4", d1 <= 1e-4, ""))
        checks.append((f"{name} fp32 best-of-n: max|vhctl-TRL| = {d2:.1e} <= 1e-4", d2 <= 1e-4, ""))
        log(f"{name}: fp32 checks {d1:.1e} {d2:.1e}")

        # --- bf16
        hf.to(torch.bfloat16)
        b_trl1, b_vh1 = runner.trl_texts(texts[:n1]), runner.vhctl(jsonl_mixed(seqs[:n1]))
        b_trl2, b_vh2 = runner.trl_pairs(pairs[:n2]), runner.vhctl(jsonl_best_of_n(pairs_rows[:n2]))
        for label, ref, bt, bv in (("mixed", ref1, b_trl1, b_vh1), ("best-of-n", ref2, b_trl2, b_vh2)):
            et, ev = maxdiff(ref, bt), maxdiff(ref, bv)
            ok = ev <= 2 * et + 1e-2
            checks.append((f"{name} bf16 {label}: vhctl err {ev:.1e} vs TRL's own bf16 err {et:.1e}", ok, ""))
        log(f"{name}: bf16 checks done")

        # --- throughput, interleaved
        tok1 = sum(len(s) for s in seqs) + len(seqs) * len(common.special_tokens(name)["prefix"])
        tok2 = sum(len(p) + len(r) for p, r in pairs_rows) + len(pairs_rows) * len(common.special_tokens(name)["prefix"])
        runner.trl_texts(texts[: args.batch_size * 2])  # warm-up
        runner.vhctl(jsonl_mixed(seqs[: args.batch_size * 2]))
        work = (
            ("mixed", tok1, len(seqs), partial(runner.trl_texts, texts), partial(runner.vhctl, data1)),
            ("best-of-n", tok2, len(pairs), partial(runner.trl_pairs, pairs), partial(runner.vhctl, data2)),
        )
        for wl, tokens, expected, f_trl, f_vh in work:
            t_trl: list[float] = []
            t_vh: list[float] = []
            count_ok = True
            for rep in range(args.reps):
                if rep and time.perf_counter() - START > args.budget_s:
                    log("time budget reached: fewer repetitions")
                    break
                for who in (("trl", "vh") if rep % 2 == 0 else ("vh", "trl")):
                    t0 = time.perf_counter()
                    vals = f_trl() if who == "trl" else f_vh()
                    dt = time.perf_counter() - t0
                    (t_trl if who == "trl" else t_vh).append(dt)
                    count_ok &= len(vals) == expected
            checks.append((f"{name} {wl}: one result per input", count_ok, ""))
            r_trl = [tokens / t for t in t_trl]
            r_vh = [tokens / t for t in t_vh]
            n = min(len(r_trl), len(r_vh))
            rows.append({
                "model": name, "workload": wl, "tokens": tokens, "reps": n,
                "trl": common.median_range(r_trl), "vhctl": common.median_range(r_vh),
                "speedup": common.median_range([v / t for v, t in zip(r_vh[:n], r_trl[:n], strict=True)]),
            })
            log(f"{name} {wl}: TRL {rows[-1]['trl']['median']:.0f} tok/s, vhctl {rows[-1]['vhctl']['median']:.0f} "
                f"tok/s, x{rows[-1]['speedup']['median']:.2f}")
        hf = vh = trl = runner = None
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    lines = [
        f"# GPU scoring benchmark{' (DRY RUN: tiny models, CPU-sized)' if args.dry_run else ''}",
        "",
        f"Device: {gpu_name} ({device}); torch {torch.__version__}; bf16 weights, fp32 value head; "
        f"batch size {args.batch_size} for both; baseline: {baseline_used}.",
        f"Workload 1: {args.texts} texts, token lengths uniform in 16..{args.max_len}. "
        f"Workload 2: {args.prompts} prompts of 96..160 tokens x 8 responses of 16..64 tokens.",
        f"Command: `python benchmarks/gpu.py{' --dry-run' if args.dry_run else ''}`; total {time.perf_counter() - START:.0f} s.",
        "",
        "| model | workload | tokens | TRL tok/s | vhctl tok/s | speed-up | reps |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {common.MODEL_LABEL.get(r['model'], r['model'])} | {r['workload']} | {r['tokens']} | "
            f"{common.fmt_mr(r['trl'])} | {common.fmt_mr(r['vhctl'])} | "
            f"{common.fmt_mr(r['speedup'], '{:.2f}', 'x')} | {r['reps']} |")
    lines += ["", "Medians with (min–max) over interleaved repetitions.", "", "## Correctness checks", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok, _ in checks]
    text = "\n".join(lines) + "\n"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text, encoding="utf-8")
    print(text)
    log(f"table written to {out_path}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
