"""Workloads 1 and 2: value scoring throughput, vhctl's ``Scorer`` (the path ``vhctl score`` runs) against
TRL's value-head model as its users call it, in one process, interleaved repetitions.

Workload 1 (mixed): texts whose token lengths are uniform in 16..256 (fixed seed), batch 16.
Workload 2 (best-of-n): prompts of 96..160 tokens, each with n responses of 16..64 tokens, as
``{"prompt", "response"}`` JSON lines, batch 16.

Also times the *matmul-bound rate*: fp32 matmuls of the model's own linear-layer shapes for a batch of
tokens, i.e. the tokens per second the backbone would reach if it were nothing but its matmuls.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# ---------------------------------------------------------------------------------------------- data


def mixed_workload(
    name: str, vocab: int, n: int, seed: int = 1234, low: int = 16, high: int = 256
) -> list[list[int]]:
    """``n`` token sequences (special tokens included) whose lengths are uniform in ``low..high``."""
    spec = common.special_tokens(name)
    rng = random.Random(seed)
    prefix = len(spec["prefix"])
    seqs = []
    for _ in range(n):
        length = rng.randint(low, high)
        seqs.append([rng.randrange(spec["first_word"], vocab) for _ in range(length - prefix)])
    return seqs


def best_of_n_workload(
    name: str, vocab: int, prompts: int, per_prompt: int, seed: int = 4321
) -> list[tuple[list[int], list[int]]]:
    """``prompts`` prompts of 96..160 tokens, each followed by ``per_prompt`` responses of 16..64 tokens."""
    spec = common.special_tokens(name)
    rng = random.Random(seed)
    prefix = len(spec["prefix"])
    rows = []
    for _ in range(prompts):
        prompt = [rng.randrange(spec["first_word"], vocab) for _ in range(rng.randint(96, 160) - prefix)]
        for _ in range(per_prompt):
            response = [rng.randrange(spec["first_word"], vocab) for _ in range(rng.randint(16, 64))]
            rows.append((prompt, response))
    return rows


def jsonl_mixed(seqs: list[list[int]]) -> bytes:
    return b"".join(
        json.dumps({"id": i, "text": common.words(s)}).encode() + b"\n" for i, s in enumerate(seqs)
    )


def jsonl_best_of_n(rows: list[tuple[list[int], list[int]]]) -> bytes:
    return b"".join(
        json.dumps({"id": i, "prompt": common.words(p), "response": " " + common.words(r)}).encode() + b"\n"
        for i, (p, r) in enumerate(rows)
    )


# ---------------------------------------------------------------------------------------------- engines


class TrlEngine:
    """TRL's ``AutoModelForCausalLMWithValueHead`` used as its users write it: batches of 16 in input order,
    padded, ``model(input_ids, attention_mask)``, the value at each row's last real token."""

    def __init__(
        self, base_dir: Path, ckpt_dir: Path, batch_size: int = 16, device: str = "cpu", dtype: Any = None
    ) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoTokenizer
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead

        kwargs = {"dtype": dtype} if dtype is not None else {}
        self.model = AutoModelForCausalLMWithValueHead.from_pretrained(str(base_dir), **kwargs).to(device)
        head = load_file(str(ckpt_dir / "value_head.safetensors"))
        with torch.no_grad():  # the same head as the vhctl checkpoint, so the values can be compared
            self.model.v_head.summary.weight.copy_(head["v_head.summary.weight"])
            self.model.v_head.summary.bias.copy_(head["v_head.summary.bias"])
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        self.batch_size = batch_size
        self.device = device

    def _forward(self, enc: Any) -> list[float]:
        import torch

        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        with torch.no_grad():
            _, _, values = self.model(input_ids=ids, attention_mask=mask)
        last = mask.sum(dim=1) - 1
        return values[torch.arange(ids.shape[0], device=ids.device), last].float().cpu().tolist()

    def score_texts(self, texts: list[str]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, return_tensors="pt")
            out.extend(self._forward(enc))
        return out

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """PPO's way: query ids (with the tokenizer's special tokens) + response ids, padded together."""
        out: list[float] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i : i + self.batch_size]
            ids = [
                self.tokenizer(p)["input_ids"] + self.tokenizer(r, add_special_tokens=False)["input_ids"]
                for p, r in chunk
            ]
            enc = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
            out.extend(self._forward(enc))
        return out


class VhctlEngine:
    """The library path of ``vhctl score``: load the checkpoint, ``Scorer(...).score(iter_records(stream))``."""

    def __init__(self, ckpt_dir: Path, batch_size: int = 16, device: str = "cpu", dtype: Any = None) -> None:
        from transformers import AutoTokenizer

        from vhctl.modeling import load_checkpoint

        kwargs = {"dtype": dtype} if dtype is not None else {}
        self.model = load_checkpoint(str(ckpt_dir), **kwargs).to(device)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(ckpt_dir))
        self.batch_size = batch_size
        self.last_stats: Any = None

    def score_jsonl(self, data: bytes) -> list[float]:
        from vhctl.io.records import iter_records
        from vhctl.scoring import Scorer

        scorer = Scorer(self.model, self.tokenizer, batch_size=self.batch_size)
        values = [r["value"] for r in scorer.score(iter_records(io.BytesIO(data)))]
        self.last_stats = scorer.stats
        return values


# ---------------------------------------------------------------------------------------------- matmul bound


def linear_shapes(config: Any) -> list[tuple[int, int]]:
    """(in, out) of every linear layer of ONE transformer block (the backbone's matmuls)."""
    h = config.hidden_size
    if config.model_type == "gpt2":
        inner = config.n_inner or 4 * h
        return [(h, 3 * h), (h, h), (h, inner), (inner, h)]
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    inter = config.intermediate_size
    return [
        (h, heads * head_dim),
        (h, kv * head_dim),
        (h, kv * head_dim),
        (heads * head_dim, h),
        (h, inter),
        (h, inter),
        (inter, h),
    ]


def flops_per_token(config: Any, mean_context: float) -> dict[str, float]:
    """Forward FLOPs per token of the backbone: 2 x linear weights, plus attention scores and sums."""
    layers = config.num_hidden_layers
    linear = 2 * layers * sum(i * o for i, o in linear_shapes(config))
    attention = 2 * 2 * layers * config.hidden_size * mean_context  # QK^T and AV over the causal context
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention)}


def lm_head_flops(config: Any) -> float:
    """FLOPs per token of the LM head over the vocabulary (what TRL's forward computes and vhctl skips)."""
    return 2.0 * config.hidden_size * config.vocab_size


def matmul_rate(
    config: Any, tokens: int = 2048, reps: int = 5, device: str = "cpu", dtype: Any = None
) -> dict:
    """Tokens/s of the model's linear layers alone: fp32 matmuls of its shapes, ``tokens`` rows at a time."""
    import torch

    dtype = dtype or torch.float32
    shapes = linear_shapes(config)
    xs = {i: torch.randn(tokens, i, device=device, dtype=dtype) for i, _ in shapes}
    ws = [torch.randn(i, o, device=device, dtype=dtype) for i, o in shapes]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def one_layer() -> None:
        for (i, _), w in zip(shapes, ws, strict=True):
            torch.mm(xs[i], w)

    for _ in range(2):
        one_layer()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(config.num_hidden_layers):
            one_layer()
        sync()
        times.append(time.perf_counter() - start)
    best = min(times)
    med = sorted(times)[len(times) // 2]
    flops = 2 * tokens * config.num_hidden_layers * sum(i * o for i, o in shapes)
    return {"tokens_per_s": tokens / med, "tokens_per_s_best": tokens / best, "gflops": flops / med / 1e9}


def square_matmul_gflops(n: int = 2048, reps: int = 3) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e9


# ---------------------------------------------------------------------------------------------- runs


def max_abs_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _blocks(n: int, count: int) -> list[tuple[int, int]]:
    count = max(1, min(count, n))
    edges = [round(i * n / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1]) for i in range(count)]


_CPU: list[float] = []


def _timed(fn: Any) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` (and its result); its process CPU seconds are appended to ``_CPU``."""
    cpu = time.process_time()
    start = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - start
    _CPU.append(time.process_time() - cpu)
    return wall, value


def run_blocks(
    label: str, blocks: list[dict[str, Any]], passes: int, *, config: Any = None, mm_tokens: int = 2048
) -> dict[str, Any]:
    """Time TRL and vhctl on each block (a repetition), alternating which goes first; compare values."""
    t_trl, t_vh, diffs, mm, tok, loads = [], [], [], [], [], []
    cpu_trl: list[float] = []
    cpu_vh: list[float] = []
    reps = [(p, b) for p in range(passes) for b in range(len(blocks))]
    for rep, (_, b) in enumerate(reps):
        block = blocks[b]
        if rep % 2 == 0:
            dt_trl, ref = _timed(block["trl"])
            dt_vh, got = _timed(block["vhctl"])
            cpu_trl.append(_CPU[-2])
            cpu_vh.append(_CPU[-1])
        else:
            dt_vh, got = _timed(block["vhctl"])
            dt_trl, ref = _timed(block["trl"])
            cpu_vh.append(_CPU[-2])
            cpu_trl.append(_CPU[-1])
        t_trl.append(dt_trl)
        t_vh.append(dt_vh)
        tok.append(block["tokens"])
        diffs.append(max_abs_diff(ref, got))
        line = (
            f"  [{label} rep {rep + 1}/{len(reps)}] {block['tokens']} tokens: "
            f"trl {block['tokens'] / dt_trl:.0f} tok/s, vhctl {block['tokens'] / dt_vh:.0f} tok/s "
            f"(x{dt_trl / dt_vh:.2f})"
        )
        if config is not None:
            mm.append(matmul_rate(config, tokens=mm_tokens, reps=3))
            line += f", matmul-bound {mm[-1]['tokens_per_s']:.0f} tok/s"
        loads.append(os.getloadavg()[0])
        print(line + f", max|dv| {diffs[-1]:.1e}, load {loads[-1]:.1f}", flush=True)
    tps_trl = [n / t for n, t in zip(tok, t_trl, strict=True)]
    tps_vh = [n / t for n, t in zip(tok, t_vh, strict=True)]
    out = {
        "reps": len(reps),
        "blocks": len(blocks),
        "passes": passes,
        "tokens_per_rep": tok,
        "trl_tok_s": common.median_range(tps_trl),
        "vhctl_tok_s": common.median_range(tps_vh),
        "trl_tok_s_total": sum(tok) / sum(t_trl),
        "vhctl_tok_s_total": sum(tok) / sum(t_vh),
        "speedup": common.median_range([v / t for v, t in zip(tps_vh, tps_trl, strict=True)]),
        "speedup_total": sum(t_trl) / sum(t_vh),
        # the same ratio in process CPU seconds: less sensitive to other processes taking the cores
        "speedup_cpu": common.median_range([a / b for a, b in zip(cpu_trl, cpu_vh, strict=True)]),
        "max_abs_diff": max(diffs),
        "trl_s": sum(t_trl),
        "vhctl_s": sum(t_vh),
        "loadavg_1min": loads,
    }
    if mm:
        out["matmul_tok_s"] = common.median_range([m["tokens_per_s"] for m in mm])
        out["matmul_gflops"] = common.median_range([m["gflops"] for m in mm])
        out["of_matmul"] = common.median_range(
            [v / m["tokens_per_s"] for v, m in zip(tps_vh, mm, strict=True)]
        )
    return out


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    base_dir = common.WORK / "models" / name
    ckpt_dir = common.WORK / "ckpt" / name
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(base_dir))
    vocab = config.vocab_size
    trl = TrlEngine(base_dir, ckpt_dir)
    vh = VhctlEngine(ckpt_dir)
    out: dict[str, Any] = {"model": name, "label": common.MODEL_LABEL.get(name, name)}
    n_special = len(common.special_tokens(name)["prefix"])

    if "1" in args.workloads:
        seqs = mixed_workload(name, vocab, args.texts)
        real = [len(s) + n_special for s in seqs]
        blocks = []
        for lo, hi in _blocks(len(seqs), args.blocks):
            texts = [common.words(s) for s in seqs[lo:hi]]
            data = jsonl_mixed(seqs[lo:hi])
            blocks.append(
                {
                    "tokens": sum(real[lo:hi]),
                    "trl": lambda texts=texts: trl.score_texts(texts),
                    "vhctl": lambda data=data: vh.score_jsonl(data),
                }
            )
        trl.score_texts([common.words(s) for s in seqs[:16]])  # warm-up, not timed
        vh.score_jsonl(jsonl_mixed(seqs[:16]))
        res = run_blocks(f"{name} W1", blocks, args.passes, config=config, mm_tokens=args.mm_tokens)
        padded = sum(
            len(real[i : min(i + 16, hi)]) * max(real[i : min(i + 16, hi)])
            for lo, hi in _blocks(len(seqs), args.blocks)
            for i in range(lo, hi, 16)
        )
        mean_ctx = sum(n * (n + 1) / 2 for n in real) / sum(real)
        fpt = flops_per_token(config, mean_ctx)
        linear, head = fpt["linear"], lm_head_flops(config)
        res.update(
            {
                "texts": len(seqs),
                "real_tokens": sum(real),
                "trl_padded_tokens": padded,
                "flops_per_token": fpt,
                "lm_head_flops_per_token": head,
                # TRL's matmul FLOPs (padded batches, backbone + LM head) over the least vhctl must compute
                "flop_bound": padded * (linear + head) / (sum(real) * linear),
                "vhctl_gflops": res["vhctl_tok_s"]["median"] * fpt["total"] / 1e9,
            }
        )
        out["mixed"] = res

    if "2" in args.workloads:
        rows = best_of_n_workload(name, vocab, args.prompts, args.per_prompt)
        blocks = []
        for lo, hi in _blocks(args.prompts, args.blocks):
            part = rows[lo * args.per_prompt : hi * args.per_prompt]
            pairs = [(common.words(p), " " + common.words(r)) for p, r in part]
            data = jsonl_best_of_n(part)
            blocks.append(
                {
                    "tokens": sum(len(p) + len(r) + n_special for p, r in part),
                    "trl": lambda pairs=pairs: trl.score_pairs(pairs),
                    "vhctl": lambda data=data: vh.score_jsonl(data),
                }
            )
        warm = rows[: 2 * args.per_prompt]
        trl.score_pairs([(common.words(p), " " + common.words(r)) for p, r in warm])
        vh.score_jsonl(jsonl_best_of_n(warm))
        res = run_blocks(f"{name} W2", blocks, args.passes)
        linear, head = flops_per_token(config, 0)["linear"], lm_head_flops(config)
        trl_padded = 0
        for lo, hi in _blocks(args.prompts, args.blocks):
            part = rows[lo * args.per_prompt : hi * args.per_prompt]
            for i in range(0, len(part), 16):
                widths = [len(p) + len(r) + n_special for p, r in part[i : i + 16]]
                trl_padded += len(widths) * max(widths)
        least = sum(len(p) + n_special for p, _ in rows[:: args.per_prompt]) + sum(len(r) for _, r in rows)
        res.update(
            {
                "trl_padded_tokens": trl_padded,
                "vhctl_least_tokens": least,
                "flop_bound": trl_padded * (linear + head) / (least * linear),
            }
        )
        stats = vh.last_stats
        res.update(
            {
                "prompts": args.prompts,
                "per_prompt": args.per_prompt,
                "lines": len(rows),
                "tokens": sum(len(p) + len(r) + n_special for p, r in rows),
                "shared_prompts_last_block": getattr(stats, "shared_prompts", None),
                "shared_tokens_last_block": getattr(stats, "shared_tokens", None),
            }
        )
        out["best_of_n"] = res
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument("--workloads", default="12")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument(
        "--blocks",
        type=int,
        default=4,
        help="split each workload into this many blocks; each block is one timed repetition",
    )
    parser.add_argument("--passes", type=int, default=1, help="times over the whole workload")
    parser.add_argument("--mm-tokens", type=int, default=2048)
    parser.add_argument("--section", default="scoring")
    args = parser.parse_args(argv)
    recorder = common.Recorder(args.section, common.CODE["scoring"], argv)
    common.set_threads()
    result: dict[str, Any] = {
        "args": vars(args),
        "loadavg_start": list(os.getloadavg()),
        "models": {},
        "square_matmul_gflops_2048": square_matmul_gflops(),
    }
    for name in args.models.split(","):
        print(f"scoring: {name}", flush=True)
        result["models"][name] = run_model(name, args)
    result["loadavg_end"] = list(os.getloadavg())
    recorder.write(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
