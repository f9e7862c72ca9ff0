"""Workload 6: bf16 scoring on a CUDA GPU, vhctl's ``Scorer`` against TRL 1.12.0's value-head model.

    python benchmarks/gpu.py                 # on a CUDA machine: gpu.json + gpu.md into $OUT (or --out DIR)
    python benchmarks/gpu.py --dry-run       # tiny models and sizes on the CPU: every code path, no figures
    bash benchmarks/gpu_check.sh             # the whole GPU session (wheels, pytest -m gpu, device map,
                                             # torchrun, this script) in one device call

Baseline. TRL's own class, ``trl.experimental.ppo.AutoModelForCausalLMWithValueHead`` from trl==1.12.0,
used as its users call it: batches in input order, right-padded, ``model(input_ids, attention_mask)``
under ``torch.no_grad()`` (the full LM with its LM head, ``output_hidden_states=True``), the value at
each row's last real token. The script refuses to run (exit 2) unless ``trl.__version__ == "1.12.0"``
is imported and the class comes from that package. ``--allow-trl-equivalent`` runs instead, when
trl 1.12.0 is not importable, a forward written here that does the same computation; it is labelled
"TRL-style forward (not TRL)" everywhere and the targets are then not judged. The GPU machine has
no network: ``benchmarks/gpu_wheels.sh`` downloads trl and the packages the image lacks, and
``gpu_check.sh`` installs them. If ``trl.experimental.ppo`` fails to import only because of a
dependency of its trainer module (e.g. ``datasets`` against the image's pyarrow), TRL's
``modeling_value_head.py`` is loaded from the same trl 1.12.0 package on its own (recorded in
``baseline.source``): the same class, unmodified.

Models (random weights, seed 0, bf16 after the fp32 checks): GPT-2 124M (``GPT2Config()``) and a
Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192, vocab
128256, tied embeddings, 1.24B parameters). Word-level tokenizers (``benchmarks/common.py``), so token
lengths are exact and nothing is downloaded.

Workloads: 1 (mixed: token lengths uniform in 16..256, seed 1234) and 2 (best-of-8: prompts of
96..160 tokens x 8 responses of 16..64, seed 4321), the generators of ``bench_scoring.py``.

Method, per model and workload:

1. fp32 checks (TF32 off) on the first ``--check-inputs`` inputs: vhctl's values equal the
   baseline's within 1e-4 x max(1, max |value|).
2. Calibration sweep on the first ``--calib-inputs`` inputs: each side at each batch size of
   ``--batches`` (after an untimed warm-up at that size): tokens/s. The baseline's best batch is
   the fastest (an out-of-memory batch size counts as not run); vhctl runs at its own fastest
   (``--vhctl-batch`` fixes it). vhctl's batch size is its ``Scorer(batch_size=...)``: sequences per
   forward pass for the longest sequences of a window, shorter ones packed to as many tokens.
3. bf16 noise check on the check inputs. TRL's own bf16 error is ``e = max |TRL_bf16 - TRL_fp32|``;
   the noise ratio is ``max |vhctl_bf16 - TRL_bf16| / e``. Within bf16 noise: ratio <= 2 (two
   computations each within e of the fp32 values are within 2e of each other).
4. Scaling: the workload gets as many inputs as make the slowest measured side's pass about
   ``--min-seconds / 2`` (from the sweep); then the sides run whole passes over the same inputs,
   alternating their order each round, until each has run at least ``--min-seconds`` (10 s).
   Measured sides: the baseline at batch 16, the baseline at its best batch (when not 16), vhctl.
   tok/s = real tokens of all passes / their seconds (tokenization included on both sides).

MFU = model FLOPs / seconds / the GPU's dense bf16 peak (H200: 989 TFLOP/s, NVIDIA's H200 datasheet;
unknown GPUs: ``--peak-tflops``, else the matmul rate measured here, labelled so). Model FLOPs count the least work scoring needs:
``2 x N x tokens + 4 x layers x d_attn x (keys each query attends to)``, N = the backbone's parameters
without its embeddings (token and position), d_attn = heads x head_dim; each input's tokens attend
causally to the tokens before them; in best-of-8 each prompt counts once and a response's tokens
attend to its prompt. The LM head, padding and recomputed prompts are not model FLOPs. The same
numerator serves both sides, so their MFU ratio is their speed ratio. ``flop_bound``: the matmul
FLOPs the baseline executes (padded batches, backbone + LM head) over the least ones, the speed-up
that skipping work alone would give at equal speed per FLOP.

Outputs under ``--out`` (default ``$OUT``, else ``benchmarks/_work/gpu``): ``gpu.json`` (every figure,
machine facts, settings, the command) and ``gpu.md`` (the table, targets met or missed, checks),
rewritten after each workload (``status`` partial, then complete). ``benchmarks/report.py`` renders
the committed ``benchmarks/results/gpu.json`` into RESULTS.md with :func:`render_body`.
Exit 1 when a correctness check fails, 2 when the baseline is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import io
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
from bench_scoring import best_of_n_workload, mixed_workload  # noqa: E402  (the CPU benchmark's generators)

SCHEMA = "vhctl-gpu-bench/1"
TRL_VERSION = "1.12.0"
TRL_CLASS = "trl.experimental.ppo.AutoModelForCausalLMWithValueHead"
NOT_TRL = "TRL-style forward (not TRL)"
BASELINE_BATCH = 16
PER_PROMPT = 8
# Dense bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name().
PEAKS = {
    "H200": (
        989e12,
        "NVIDIA H200 datasheet, dense bf16 989 TFLOP/s (1,979 with sparsity)",
    ),
    "H100 80GB HBM3": (989e12, "NVIDIA H100 SXM datasheet, dense bf16 989 TFLOP/s"),
    "A100": (312e12, "NVIDIA A100 datasheet, dense bf16 312 TFLOP/s"),
}
TARGET_MODEL = "llama-1b"
TARGETS = {"mixed": 3.0, "best_of_n": 5.0}  # x TRL tok/s, the 1B model (issue #16)
MFU_TARGET = 0.40  # mixed, the 1B model
NOISE_LIMIT = 2.0
WORKLOAD_LABEL = {"mixed": "1. mixed lengths", "best_of_n": "2. best-of-8"}
START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- baseline


class BaselineRefused(Exception):
    """trl 1.12.0 is not importable and no TRL-style stand-in was allowed."""


@dataclass
class Baseline:
    """Which baseline runs, and how it wraps a transformers model."""

    label: str
    is_trl: bool
    trl_version: str  # the imported version, or "not TRL"
    source: str
    wrap: Callable[[Any], Any]

    def facts(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "is_trl": self.is_trl,
            "trl_version": self.trl_version,
            "source": self.source,
        }


class TrlStyleForward:
    """NOT TRL: the computation of TRL's forward, written here, for ``--allow-trl-equivalent`` only.

    The full LM with ``output_hidden_states=True``, the head ``Linear(hidden, 1)`` in fp32 on the last
    hidden state, the logits upcast to fp32; returns ``(logits, None, values)`` like TRL.
    """

    def __init__(self, model: Any) -> None:
        import torch

        self.pretrained_model = model
        self.v_head = torch.nn.Module()
        self.v_head.summary = torch.nn.Linear(model.config.hidden_size, 1)

    def eval(self) -> TrlStyleForward:
        self.pretrained_model.eval()
        return self

    def __call__(self, input_ids: Any, attention_mask: Any) -> tuple[Any, None, Any]:
        out = self.pretrained_model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        last = out.hidden_states[-1]
        weight = self.v_head.summary.weight
        values = self.v_head.summary(last.to(weight.dtype)).squeeze(-1)
        return out.logits.float(), None, values


def _trl_class() -> tuple[Any, str]:
    """TRL's class and how it was imported (the package path, or its module file on its own)."""
    import trl

    try:
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead as cls

        return cls, f"from {TRL_CLASS.rsplit('.', 1)[0]} import AutoModelForCausalLMWithValueHead"
    except ImportError as exc:  # the trainer's dependencies (datasets...), not the model's
        path = Path(trl.__file__).parent / "experimental" / "ppo" / "modeling_value_head.py"
        spec = importlib.util.spec_from_file_location("trl.experimental.ppo.modeling_value_head", path)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module.AutoModelForCausalLMWithValueHead, (
            f"{path} loaded on its own (trl.experimental.ppo did not import: {exc!r})"
        )


def honest(baseline: Baseline) -> bool:
    """A baseline called TRL is trl 1.12.0 as imported now; any other says "not TRL"."""
    if not baseline.is_trl:
        return baseline.label == NOT_TRL and baseline.trl_version == "not TRL"
    import trl

    return trl.__version__ == TRL_VERSION == baseline.trl_version and baseline.label == f"TRL {TRL_VERSION}"


def load_baseline(allow_equivalent: bool) -> Baseline:
    """TRL 1.12.0's class, or (only when allowed) the labelled TRL-style stand-in.

    Raises:
        BaselineRefused: trl 1.12.0 cannot be imported and ``allow_equivalent`` is off.
    """
    why = ""
    try:
        import trl

        version = getattr(trl, "__version__", "?")
        if version != TRL_VERSION:
            why = f"trl {version} is installed, not {TRL_VERSION}"
        else:
            cls, source = _trl_class()
            trl_dir = Path(trl.__file__).resolve().parent
            if (
                not cls.__module__.startswith("trl.")
                or trl_dir not in Path(inspect.getfile(cls)).resolve().parents
            ):
                why = f"{cls.__module__} is not part of the trl package at {trl_dir}"
            else:
                return Baseline(f"TRL {version}", True, version, source, cls.from_pretrained)
    except ImportError as exc:
        why = f"trl cannot be imported ({exc})"
    if not allow_equivalent:
        raise BaselineRefused(
            f"{why}: the baseline would not be TRL {TRL_VERSION}. Install the wheels from "
            "benchmarks/gpu_wheels.sh, or pass --allow-trl-equivalent for a baseline labelled "
            f"'{NOT_TRL}'"
        )
    return Baseline(NOT_TRL, False, "not TRL", f"benchmarks/gpu.py TrlStyleForward ({why})", TrlStyleForward)


# ---------------------------------------------------------------------------------------------- models


def model_config(key: str, tiny: bool) -> tuple[Any, str]:
    """The config and tokenizer family of a benchmark model (tiny: a few-hundred-KB stand-in)."""
    from transformers import GPT2Config, LlamaConfig

    if key == "gpt2":
        if tiny:
            return GPT2Config(
                n_embd=64,
                n_layer=2,
                n_head=4,
                n_positions=512,
                vocab_size=1000,
                bos_token_id=0,
                eos_token_id=0,
            ), "gpt2"
        return GPT2Config(), "gpt2"
    if key == "llama-1b":
        shape = (
            dict(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=128,
                vocab_size=1000,
            )
            if tiny
            else dict(
                hidden_size=2048,
                num_hidden_layers=16,
                num_attention_heads=32,
                num_key_value_heads=8,
                intermediate_size=8192,
                vocab_size=128256,
            )
        )
        return LlamaConfig(
            **shape,
            tie_word_embeddings=True,
            max_position_embeddings=8192,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ), "llama"
    raise SystemExit(f"unknown model {key!r}: use gpt2, llama-1b")


def count_params(hf: Any) -> tuple[int, int]:
    """All parameters of the LM, and N: its backbone's without the embedding tables (token, position)."""
    import torch

    backbone = getattr(hf, "base_model", hf)
    total = sum(p.numel() for p in hf.parameters())  # a tied LM head is counted once
    embed = {id(m.weight) for m in backbone.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in backbone.parameters() if id(p) not in embed)
    return total, n


@dataclass
class Model:
    key: str
    label: str
    family: str
    hf: Any
    vh: Any
    base: Any
    tok: Any
    config: Any
    params: int
    n_nonembed: int


def build_model(key: str, tiny: bool, device: str, baseline: Baseline) -> Model:
    """The LM (fp32, on ``device``), wrapped once by vhctl and once by the baseline, with one head."""
    import torch
    from transformers import AutoModelForCausalLM

    import vhctl

    config, family = model_config(key, tiny)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf.eval()
    vh = vhctl.AutoModelForCausalLMWithValueHead.from_pretrained(hf)
    base = baseline.wrap(hf)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        weight = torch.randn(1, config.hidden_size, generator=gen) / math.sqrt(config.hidden_size)
        for wrapper in (vh, base):
            wrapper.v_head.summary.weight.copy_(weight)
            wrapper.v_head.summary.bias.zero_()
            wrapper.v_head.to(device)
            wrapper.eval()
    total, n = count_params(hf)
    label = {"gpt2": "GPT-2 124M", "llama-1b": f"Llama-shaped {total / 1e9:.2f}B"}[key]
    if tiny:
        label = f"tiny {key} (dry run)"
    tok = common.build_tokenizer(family, config.vocab_size)
    return Model(key, label, family, hf, vh, base, tok, config, total, n)


# ---------------------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """Inputs of one workload, in the forms each side reads them."""

    kind: str
    seqs: list[list[int]]  # mixed: each text's ids (without specials); best-of-n: prompt + response ids
    rows: list[tuple[list[int], list[int]]]
    n_special: int
    strings: list[Any]  # the baseline's input: texts, or (prompt, response) pairs
    jsonl: bytes  # vhctl's input: the JSON lines `vhctl score` reads

    @property
    def n(self) -> int:
        return len(self.rows) if self.kind == "best_of_n" else len(self.seqs)

    def lengths(self) -> list[int]:
        """Real tokens per input (special tokens included), as both sides compute them."""
        if self.kind == "best_of_n":
            return [len(p) + len(r) + self.n_special for p, r in self.rows]
        return [len(s) + self.n_special for s in self.seqs]

    def segments(self) -> list[tuple[int, int]]:
        """(tokens before, new tokens) of the least work: each text; each prompt once, then each response."""
        if self.kind == "mixed":
            return [(0, n) for n in self.lengths()]
        out: list[tuple[int, int]] = []
        last = None
        for prompt, response in self.rows:
            plen = len(prompt) + self.n_special
            if prompt is not last:
                out.append((0, plen))
                last = prompt
            out.append((plen, len(response)))
        return out

    def padded_batches(self, batch: int) -> list[tuple[int, int]]:
        """(rows, longest) of each baseline batch (input order)."""
        lengths = self.lengths()
        return [
            (len(lengths[i : i + batch]), max(lengths[i : i + batch])) for i in range(0, len(lengths), batch)
        ]


def make_workload(kind: str, family: str, vocab: int, n: int, max_len: int) -> Workload:
    """The first ``n`` inputs of a workload (a prefix of any larger one: the generators are sequential).

    Best-of-8 keeps whole prompts: ``n`` is rounded up to a multiple of 8 responses.
    """
    n_special = len(common.special_tokens(family)["prefix"])
    if kind == "mixed":
        seqs = mixed_workload(family, vocab, n, seed=1234, high=max_len)
        strings: list[Any] = [common.words(s) for s in seqs]
        lines = [{"id": i, "text": t} for i, t in enumerate(strings)]
        rows: list[tuple[list[int], list[int]]] = []
    else:
        rows = best_of_n_workload(family, vocab, max(1, math.ceil(n / PER_PROMPT)), PER_PROMPT, seed=4321)
        seqs = [p + r for p, r in rows]
        strings = [(common.words(p), " " + common.words(r)) for p, r in rows]
        lines = [{"id": i, "prompt": p, "response": r} for i, (p, r) in enumerate(strings)]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return Workload(kind, seqs, rows, n_special, strings, data)


def flops(segments: list[tuple[int, int]], n_params: int, layers: int, d_attn: int) -> float:
    """Model FLOPs: 2 N per token, plus QK^T and AV (4 d_attn per layer per key) over the causal context."""
    total = 0.0
    for before, new in segments:
        keys = (
            new * before + new * (new + 1) / 2
        )  # token i (1-based after `before`) attends to before + i keys
        total += 2.0 * n_params * new + 4.0 * layers * d_attn * keys
    return total


# ---------------------------------------------------------------------------------------------- engines


class Engines:
    """The two sides on one model: the baseline as its users call it, and vhctl's Scorer."""

    def __init__(self, model: Model, device: str) -> None:
        self.m = model
        self.device = device

    def baseline(self, wl: Workload, batch: int) -> list[float]:
        import torch

        tok, out = self.m.tok, []
        for i in range(0, wl.n, batch):
            chunk = wl.strings[i : i + batch]
            if wl.kind == "mixed":
                enc = tok(chunk, padding=True, return_tensors="pt")
            else:  # PPO's way: query ids (with specials) + response ids, padded together
                ids = [tok(p)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"] for p, r in chunk]
                enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
            ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            with torch.no_grad():
                _, _, values = self.m.base(input_ids=ids, attention_mask=mask)
            last = mask.sum(dim=1) - 1
            out.extend(values[torch.arange(ids.shape[0], device=ids.device), last].float().cpu().tolist())
        return out

    def vhctl(self, wl: Workload, batch: int) -> list[float]:
        from vhctl.io.records import iter_records
        from vhctl.scoring import Scorer

        scorer = Scorer(self.m.vh, self.m.tok, batch_size=batch)
        return [r["value"] for r in scorer.score(iter_records(io.BytesIO(wl.jsonl)))]

    def run(self, side: str, wl: Workload, batch: int) -> list[float]:
        return self.baseline(wl, batch) if side == "baseline" else self.vhctl(wl, batch)


def _oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def maxdiff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


# ---------------------------------------------------------------------------------------------- measuring


def calibrate(eng: Engines, wl: Workload, batches: list[int]) -> dict[str, dict[str, float | None]]:
    """tok/s of each side at each batch size on ``wl`` (after an untimed warm-up); None: out of memory."""
    tokens = sum(wl.lengths())
    out: dict[str, dict[str, float | None]] = {"baseline": {}, "vhctl": {}}
    for side in ("baseline", "vhctl"):
        for b in batches:
            try:
                warm = make_slice(wl, min(wl.n, b))  # one batch at this size: allocations, kernel choice
                eng.run(side, warm, b)
                t0 = time.perf_counter()
                eng.run(side, wl, b)
                out[side][str(b)] = tokens / (time.perf_counter() - t0)
            except RuntimeError as exc:
                if not _oom(exc):
                    raise
                out[side][str(b)] = None
                _free(eng.device)
        log(
            f"  sweep {side}: "
            + ", ".join(f"b{b} {v:.0f}" if v else f"b{b} OOM" for b, v in out[side].items())
        )
    return out


def make_slice(wl: Workload, n: int) -> Workload:
    if n >= wl.n:
        return wl
    lines = wl.jsonl.split(b"\n")[:n]
    return Workload(
        wl.kind, wl.seqs[:n], wl.rows[:n], wl.n_special, wl.strings[:n], b"\n".join(lines) + b"\n"
    )


def best_batch(rates: dict[str, float | None]) -> int:
    ok = {int(b): r for b, r in rates.items() if r}
    if not ok:
        raise RuntimeError("every batch size ran out of memory")
    return max(ok, key=lambda b: ok[b])


def measure(
    sides: list[tuple[str, Callable[[], list[float]]]], tokens: int, expected: int, min_s: float
) -> dict[str, dict[str, Any]]:
    """Whole passes, alternating the order each round, until every side has run ``min_s`` seconds."""
    stats: dict[str, dict[str, Any]] = {
        name: {"times": [], "count_ok": True, "values": []} for name, _ in sides
    }
    rnd = 0
    while any(sum(stats[n]["times"]) < min_s for n, _ in sides) and rnd < 1000:
        for name, fn in sides if rnd % 2 == 0 else list(reversed(sides)):
            s = stats[name]
            if sum(s["times"]) >= min_s:
                continue
            t0 = time.perf_counter()
            values = fn()
            s["times"].append(time.perf_counter() - t0)
            s["count_ok"] &= len(values) == expected
            s["values"] = values
        rnd += 1
    out = {}
    for name, s in stats.items():
        secs = sum(s["times"])
        out[name] = {
            "passes": len(s["times"]),
            "seconds": secs,
            "tok_s": tokens * len(s["times"]) / secs,
            "tok_s_per_pass": common.median_range([tokens / t for t in s["times"]]),
            "count_ok": s["count_ok"],
            "values": s["values"],
        }
    return out


@dataclass
class Ctx:
    args: argparse.Namespace
    device: str
    peak: float
    matmul_peak: float
    checks: list[dict[str, Any]]


def check(ctx: Ctx, name: str, ok: bool, detail: str) -> None:
    ctx.checks.append({"name": name, "ok": bool(ok), "detail": detail})
    log(f"  {'PASS' if ok else 'FAIL'} {name}: {detail}")


def fp32_refs(ctx: Ctx, m: Model, eng: Engines) -> dict[str, list[float]]:
    """Baseline fp32 values on each workload's check inputs (TF32 off); checks vhctl's fp32 values."""
    refs = {}
    for kind in ctx.args.kinds:
        wl = make_workload(kind, m.family, m.config.vocab_size, ctx.args.check_inputs, ctx.args.max_len)
        ref = eng.baseline(wl, BASELINE_BATCH)
        got = eng.vhctl(wl, BASELINE_BATCH)
        tol = 1e-4 * max(1.0, max(abs(v) for v in ref))
        d = maxdiff(ref, got)
        check(
            ctx,
            f"{m.key} {kind} fp32: vhctl = baseline",
            d <= tol,
            f"max |vhctl - baseline| = {d:.2e} <= {tol:.1e} on {wl.n} inputs (TF32 off)",
        )
        refs[kind] = ref
    return refs


def bench_workload(ctx: Ctx, m: Model, eng: Engines, kind: str, ref32: list[float]) -> dict[str, Any]:
    """Sweep, bf16 noise, scale, measure; every figure of one model x workload."""
    a = ctx.args
    vocab = m.config.vocab_size
    calib = make_workload(kind, m.family, vocab, a.calib_inputs, a.max_len)
    sweep = calibrate(eng, calib, a.batches)
    b_best = best_batch(sweep["baseline"])
    b_vh = a.vhctl_batch or best_batch(sweep["vhctl"])

    checkset = make_workload(kind, m.family, vocab, a.check_inputs, a.max_len)
    base_bf, vh_bf = eng.baseline(checkset, BASELINE_BATCH), eng.vhctl(checkset, b_vh)
    e_trl, e_vh, d = maxdiff(base_bf, ref32), maxdiff(vh_bf, ref32), maxdiff(vh_bf, base_bf)
    ratio = d / e_trl if e_trl > 0 else (0.0 if d == 0 else math.inf)
    noise = {
        "inputs": checkset.n,
        "baseline_bf16_err": e_trl,
        "vhctl_bf16_err": e_vh,
        "max_abs_diff": d,
        "noise_ratio": ratio,
        "limit": NOISE_LIMIT,
        "ok": ratio <= NOISE_LIMIT,
    }
    check(
        ctx,
        f"{m.key} {kind} bf16: vhctl within bf16 noise of the baseline",
        noise["ok"],
        f"max |vhctl - baseline| = {d:.2e} = {ratio:.2f} x the baseline's own bf16 error {e_trl:.2e} "
        f"(limit {NOISE_LIMIT:g}x; vhctl's own error {e_vh:.2e})",
    )

    tokens_c = sum(calib.lengths())
    measured = {"baseline": [BASELINE_BATCH, b_best], "vhctl": [b_vh]}
    slowest = min(sweep[s].get(str(b)) or math.inf for s, bs in measured.items() for b in bs)
    slowest = slowest if slowest < math.inf else max(r for rs in sweep.values() for r in rs.values() if r)
    per_input_s = tokens_c / slowest / calib.n
    n = int(min(a.max_inputs, max(calib.n, math.ceil(a.min_seconds / 2 / per_input_s))))
    wl = make_workload(kind, m.family, vocab, n, a.max_len)
    tokens = sum(wl.lengths())
    log(
        f"  {m.key} {kind}: {n} inputs, {tokens} tokens per pass; baseline best batch {b_best}, vhctl batch {b_vh}"
    )
    sides = [(f"baseline@{BASELINE_BATCH}", lambda: eng.baseline(wl, BASELINE_BATCH))]
    if b_best != BASELINE_BATCH:
        sides.append((f"baseline@{b_best}", lambda: eng.baseline(wl, b_best)))
    sides.append(("vhctl", lambda: eng.vhctl(wl, b_vh)))
    runs = measure(sides, tokens, wl.n, a.min_seconds)
    for name, r in runs.items():
        check(
            ctx,
            f"{m.key} {kind} {name}: one result per input, in order",
            r["count_ok"],
            f"{r['passes']} pass(es) of {wl.n} inputs",
        )
    full_diff = maxdiff(runs["vhctl"].pop("values"), runs[f"baseline@{BASELINE_BATCH}"]["values"])
    for r in runs.values():
        r.pop("values", None)

    cfg = m.config
    heads = cfg.num_attention_heads
    d_attn = heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    model_flops = flops(wl.segments(), m.n_nonembed, cfg.num_hidden_layers, d_attn)
    lm_head = cfg.hidden_size * cfg.vocab_size
    least_linear = 2.0 * m.n_nonembed * sum(new for _, new in wl.segments())

    def executed(batch: int) -> float:
        return sum(
            rows * longest * 2.0 * (m.n_nonembed + lm_head) for rows, longest in wl.padded_batches(batch)
        )

    for r in runs.values():
        r["mfu"] = model_flops * r["passes"] / r["seconds"] / ctx.peak
        r["of_matmul"] = model_flops * r["passes"] / r["seconds"] / ctx.matmul_peak
    vh, b16, bb = runs["vhctl"], runs[f"baseline@{BASELINE_BATCH}"], runs[f"baseline@{b_best}"]
    log(
        f"  {m.key} {kind}: baseline@16 {b16['tok_s']:.0f} tok/s, baseline@{b_best} {bb['tok_s']:.0f}, "
        f"vhctl@{b_vh} {vh['tok_s']:.0f} (x{vh['tok_s'] / b16['tok_s']:.2f} / x{vh['tok_s'] / bb['tok_s']:.2f}), "
        f"MFU {vh['mfu']:.1%}"
    )
    return {
        "inputs": wl.n,
        "tokens_per_pass": tokens,
        "model_flops_per_pass": model_flops,
        "calibration": {"inputs": calib.n, "tokens": tokens_c, "tok_s": sweep},
        "baseline_best_batch": b_best,
        "vhctl_batch": b_vh,
        "sides": runs,
        "speedup_vs_batch16": vh["tok_s"] / b16["tok_s"],
        "speedup_vs_best": vh["tok_s"] / bb["tok_s"],
        "mfu": vh["mfu"],
        "of_matmul": vh["of_matmul"],
        "flop_bound_vs_batch16": executed(BASELINE_BATCH) / least_linear,
        "flop_bound_vs_best": executed(b_best) / least_linear,
        "bf16_noise": noise,
        "full_max_abs_diff_vs_batch16": full_diff,
    }


# ---------------------------------------------------------------------------------------------- targets


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for the 1B model: met or missed, with the figure and a reason."""
    out: list[dict[str, Any]] = []
    m = res["models"].get(TARGET_MODEL)
    base, b16 = res["baseline"], res["settings"]["baseline_batch"]
    judge = None
    if res["dry_run"]:
        judge = "not judged: dry run (tiny models on the CPU)"
    elif not base["is_trl"]:
        judge = f"not judged: the baseline is {base['label']}"
    label = m["label"] if m else "1B model"

    def add(text: str, figure: str, ok: bool | None, reason: str) -> None:
        verdict = judge or ("met" if ok else "missed")
        out.append(
            {
                "target": text,
                "measured": figure,
                "ok": None if judge else ok,
                "verdict": verdict,
                "reason": "" if judge or ok else reason,
            }
        )

    for kind, goal in TARGETS.items():
        w = (m or {}).get("workloads", {}).get(kind)
        for key, which in (("speedup_vs_batch16", f"batch {b16}"), ("speedup_vs_best", "its best batch")):
            text = f"{label}, {WORKLOAD_LABEL[kind]}: >= {goal:g}x {base['label']} at {which}"
            if not w or "sides" not in w:
                out.append(
                    {
                        "target": text,
                        "measured": "n/a",
                        "ok": None,
                        "verdict": "not measured",
                        "reason": (w or {}).get("skipped", "not run"),
                    }
                )
                continue
            s = w[key]
            bound = w["flop_bound_vs_batch16" if key == "speedup_vs_batch16" else "flop_bound_vs_best"]
            b = b16 if key == "speedup_vs_batch16" else w["baseline_best_batch"]
            base_mfu = w["sides"][f"baseline@{b}"]["mfu"]
            add(
                text + ("" if key == "speedup_vs_batch16" else f" ({b})"),
                f"{s:.2f}x",
                s >= goal,
                f"{s / goal:.0%} of the target; the baseline executes {bound:.2f}x the matmul FLOPs vhctl needs "
                f"(padding + LM head), so skipping work alone gives about x{bound:.2f}; MFU vhctl {w['mfu']:.1%} "
                f"vs the baseline's {base_mfu:.1%} on the same model FLOPs",
            )
    w = (m or {}).get("workloads", {}).get("mixed")
    text = f"{label}, {WORKLOAD_LABEL['mixed']}: MFU >= {MFU_TARGET:.0%}"
    if w and "sides" in w:
        add(
            text,
            f"{w['mfu']:.1%}",
            w["mfu"] >= MFU_TARGET,
            f"vhctl runs at {w['of_matmul']:.0%} of the bf16 matmul rate measured on this GPU "
            f"({res['peak']['measured_matmul_tflops']:.4g} TFLOP/s; peak {res['peak']['tflops']:.4g}), batch "
            f"{w['vhctl_batch']}, inputs of {w['tokens_per_pass'] / w['inputs']:.0f} tokens on average",
        )
    else:
        out.append({"target": text, "measured": "n/a", "ok": None, "verdict": "not measured", "reason": ""})
    for kind in TARGETS:
        w = (m or {}).get("workloads", {}).get(kind)
        text = f"{label}, {WORKLOAD_LABEL[kind]}: values within bf16 noise of {base['label']}'s"
        if w and "bf16_noise" in w:
            n = w["bf16_noise"]
            add(
                text,
                f"{n['max_abs_diff']:.2e} = {n['noise_ratio']:.2f}x its own bf16 error",
                n["ok"],
                f"over the {NOISE_LIMIT:g}x limit",
            )
        else:
            out.append(
                {"target": text, "measured": "n/a", "ok": None, "verdict": "not measured", "reason": ""}
            )
    return out


# ---------------------------------------------------------------------------------------------- output


def code_fingerprint(root: Path = ROOT) -> str:
    """sha256 over vhctl/**/*.py (paths and bytes): which scorer code the figures belong to."""
    h = hashlib.sha256()
    for path in sorted((root / "vhctl").rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("VHCTL_COMMIT", "unknown")


def _pct(x: float) -> str:
    return f"{x:.1%}"


def render_body(res: dict[str, Any]) -> list[str]:
    """Markdown lines for a results dict: settings, the table, targets, checks (gpu.md and RESULTS.md)."""
    base, mach, st = res["baseline"], res["machine"], res["settings"]
    lab, b16_size = base["label"], st["baseline_batch"]
    lines = [
        f"Device: {mach['gpu']} ({mach['device']}); torch {mach['torch']}, CUDA {mach['cuda']}, transformers "
        f"{mach['transformers']}, Python {mach['python']}; code {res['commit'][:12]} (vhctl fingerprint "
        f"{res['code_sha256'][:12]}).",
        f"Baseline: **{lab}** ({base['source']}); trl: {mach['trl']}. bf16 weights, fp32 value heads.",
        f"Batch sizes: the baseline at {b16_size} and at its best of {st['batches']} (sweep on the first "
        f"{st['calib_inputs']} inputs); vhctl at its best of the same sweep"
        + (f" (fixed: {st['vhctl_batch']})" if st["vhctl_batch"] else "")
        + ". Each side ran whole passes "
        f"until >= {st['min_seconds']:g} s. Peak: {res['peak']['tflops']:.4g} TFLOP/s dense bf16 "
        f"({res['peak']['source']}); matmul rate measured here {res['peak']['measured_matmul_tflops']:.4g} TFLOP/s"
        f"{' (fp32, 256^3: a dry run)' if res['dry_run'] else ' (bf16, 8192^3)'}.",
        f"Command: `{res['command']}`; {res['elapsed_s']:.0f} s; status {res['status']}.",
        "",
        f"| model | workload | inputs x tokens/pass | {lab} b{b16_size} tok/s | {lab} best (b) tok/s | "
        f"vhctl (b) tok/s | x vs b{b16_size} | x vs best | MFU vhctl | MFU baseline b{b16_size} | bf16 noise ratio | passes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for m in res["models"].values():
        for kind, w in m["workloads"].items():
            if "sides" not in w:
                lines.append(
                    f"| {m['label']} | {WORKLOAD_LABEL[kind]} | not measured: {w.get('skipped', '?')} "
                    "| | | | | | | | | |"
                )
                continue
            s = w["sides"]
            b16, bb, vh = s[f"baseline@{b16_size}"], s[f"baseline@{w['baseline_best_batch']}"], s["vhctl"]
            lines.append(
                f"| {m['label']} | {WORKLOAD_LABEL[kind]} | {w['inputs']} x {w['tokens_per_pass']} | "
                f"{b16['tok_s']:.0f} | {bb['tok_s']:.0f} ({w['baseline_best_batch']}) | {vh['tok_s']:.0f} "
                f"({w['vhctl_batch']}) | {w['speedup_vs_batch16']:.2f}x | {w['speedup_vs_best']:.2f}x | "
                f"{_pct(vh['mfu'])} | {_pct(b16['mfu'])} | {w['bf16_noise']['noise_ratio']:.2f} | "
                f"{b16['passes']}/{bb['passes']}/{vh['passes']} |"
            )
    lines += [
        "",
        "tok/s: real tokens of all passes over their seconds, tokenization included. MFU: model FLOPs (2 x "
        "non-embedding parameters x tokens + causal attention; best-of-8 counts each prompt once) over "
        "seconds over the peak. bf16 noise ratio: max |vhctl - baseline| in bf16 over the baseline's own "
        f"bf16 error against its fp32 values, on {st['check_inputs']} inputs (within noise: <= {NOISE_LIMIT:g}). "
        f"passes: baseline b{b16_size} / baseline best / vhctl.",
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
    ]
    for t in res["targets"]:
        verdict = f"**{t['verdict']}**" + (f": {t['reason']}" if t.get("reason") else "")
        lines.append(f"| {t['target']} | {t['measured']} | {verdict} |")
    lines += ["", "Checks:", ""]
    lines += [f"- {'PASS' if c['ok'] else 'FAIL'}: {c['name']}: {c['detail']}" for c in res["checks"]]
    return lines


def write_outputs(res: dict[str, Any], out: Path) -> None:
    res["elapsed_s"] = time.perf_counter() - START
    res["targets"] = targets(res)
    json_path, md_path = (
        (out.with_suffix(".json"), out) if out.suffix == ".md" else (out / "gpu.json", out / "gpu.md")
    )
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    title = "# GPU scoring benchmark" + (
        " (DRY RUN: tiny models on the CPU, not results)" if res["dry_run"] else ""
    )
    md_path.write_text("\n".join([title, "", *render_body(res)]) + "\n", encoding="utf-8")


def machine(device: str, baseline: Baseline) -> dict[str, Any]:
    import torch
    import transformers

    import vhctl

    facts: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "vhctl": getattr(vhctl, "__version__", "?"),
        "trl": baseline.trl_version if baseline.is_trl else "not TRL",
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            gpu_mem_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            facts["driver"] = smi.stdout.strip() or "?"
        except (OSError, subprocess.SubprocessError):
            facts["driver"] = "?"
    else:
        facts["gpu"] = f"none (CPU: {platform.processor() or platform.machine()})"
    return facts


def matmul_tflops(device: str, dry: bool) -> float:
    """bf16 matmul rate measured here (8192^3, 3 warm-ups, mean of 10; dry run: 256^3 on the CPU)."""
    import torch

    n, dtype = (256, torch.float32) if dry else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        torch.mm(a, b)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        torch.mm(a, b)
    sync()
    return 2 * n**3 * 10 / (time.perf_counter() - t0) / 1e12


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for gpu.json + gpu.md (default $OUT, else benchmarks/_work/gpu); a FILE.md "
        "path writes FILE.md and FILE.json",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="tiny models and sizes on the CPU (checks the code paths)"
    )
    p.add_argument("--device", default=None, help="default: cuda when available (dry run: cpu)")
    p.add_argument(
        "--models", default="llama-1b,gpt2", help="comma-separated: llama-1b, gpt2 (in this order)"
    )
    p.add_argument("--workloads", default="12", help="1 = mixed lengths, 2 = best-of-8")
    p.add_argument("--batches", default="8,16,32,64,128", help="the sweep, for both sides")
    p.add_argument("--vhctl-batch", type=int, default=None, help="fix vhctl's batch size (default: its best)")
    p.add_argument("--min-seconds", type=float, default=10.0, help="each side runs at least this long")
    p.add_argument(
        "--max-len", type=int, default=256, help="workload 1's longest text, tokens (CPU benchmark: 256)"
    )
    p.add_argument("--calib-inputs", type=int, default=256)
    p.add_argument("--check-inputs", type=int, default=128)
    p.add_argument("--max-inputs", type=int, default=50000, help="cap on a scaled workload")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no new model x workload past this many seconds (marked not measured)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, for a GPU not in PEAKS")
    p.add_argument(
        "--allow-trl-equivalent",
        action="store_true",
        help=f"without trl {TRL_VERSION}: run a forward labelled '{NOT_TRL}' (targets not judged)",
    )
    args = p.parse_args(argv)
    if args.dry_run:
        args.batches, args.min_seconds, args.max_len = "2,4", min(args.min_seconds, 0.05), 48
        args.calib_inputs, args.check_inputs, args.max_inputs = 8, 8, 24
    args.batches = [int(b) for b in args.batches.split(",")]
    args.kinds = [{"1": "mixed", "2": "best_of_n"}[w] for w in args.workloads if w in "12"]
    args.command = "python benchmarks/gpu.py" + "".join(
        " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    return args


def over_budget(args: argparse.Namespace) -> bool:
    return args.budget_s is not None and time.perf_counter() - START > args.budget_s


def main(argv: list[str] | None = None) -> int:
    global START
    START = time.perf_counter()
    args = parse_args(argv)
    import torch

    device = args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device == "cpu" and not args.dry_run:
        print("gpu.py: no CUDA device; use --dry-run for the CPU smoke run", file=sys.stderr)
        return 2
    try:
        baseline = load_baseline(args.allow_trl_equivalent)
    except BaselineRefused as exc:
        print(f"gpu.py: refused: {exc}", file=sys.stderr)
        return 2
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else common.WORK / "gpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 checks; bf16 matmuls are unaffected
    torch.backends.cudnn.allow_tf32 = False
    mach = machine(device, baseline)
    measured = matmul_tflops(device, args.dry_run)
    name = mach["gpu"]
    peak, source = next(((p, s) for key, (p, s) in PEAKS.items() if key in name), (None, ""))
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e12, "--peak-tflops"
    if peak is None:
        peak, source = measured * 1e12, "no datasheet figure for this device: the matmul rate measured here"
    log(
        f"{name}: torch {mach['torch']}, baseline {baseline.label} ({baseline.source}); peak {peak / 1e12:.4g} "
        f"TFLOP/s, measured matmul {measured:.4g} TFLOP/s"
    )
    ctx = Ctx(args, device, peak, measured * 1e12, [])
    check(
        ctx,
        "baseline label is honest",
        honest(baseline),
        f"{baseline.label}: trl {mach['trl']}, {baseline.source}",
    )
    res: dict[str, Any] = {
        "schema": SCHEMA,
        "dry_run": args.dry_run,
        "status": "partial",
        "command": args.command,
        "created": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": git_commit(),
        "code_sha256": code_fingerprint(),
        "machine": mach,
        "baseline": baseline.facts(),
        "peak": {"tflops": peak / 1e12, "source": source, "measured_matmul_tflops": measured},
        "settings": {
            k: getattr(args, k)
            for k in (
                "batches",
                "vhctl_batch",
                "min_seconds",
                "max_len",
                "calib_inputs",
                "check_inputs",
                "max_inputs",
                "budget_s",
            )
        }
        | {"baseline_batch": BASELINE_BATCH, "dtype": "bfloat16", "per_prompt": PER_PROMPT},
        "models": {},
        "checks": ctx.checks,
    }
    for key in args.models.split(","):
        if over_budget(args):
            res["models"][key] = {
                "label": key,
                "workloads": {k: {"skipped": "time budget reached"} for k in args.kinds},
            }
            log(f"{key}: skipped (time budget)")
            continue
        t0 = time.perf_counter()
        try:
            m = build_model(key, args.dry_run, device, baseline)
            eng = Engines(m, device)
            refs = fp32_refs(ctx, m, eng)
        except Exception as exc:  # noqa: BLE001 - one GPU session: record it, go on with the next model
            traceback.print_exc()
            res["models"][key] = {
                "label": key,
                "workloads": {k: {"skipped": f"error: {exc!r}"[:300]} for k in args.kinds},
            }
            check(ctx, f"{key}: built and checked in fp32", False, f"{exc!r}"[:300])
            _free(device)
            continue
        entry = res["models"][key] = {
            "label": m.label,
            "params": m.params,
            "params_nonembedding": m.n_nonembed,
            "config": {
                k: getattr(m.config, k, None)
                for k in (
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "intermediate_size",
                    "vocab_size",
                    "tie_word_embeddings",
                )
            }
            | {"attn_implementation": m.hf.config._attn_implementation},
            "workloads": {},
        }
        log(
            f"{key}: {m.label}, {m.params / 1e6:.1f}M parameters ({m.n_nonembed / 1e6:.1f}M non-embedding), "
            f"built and checked in fp32 in {time.perf_counter() - t0:.1f} s"
        )
        m.hf.to(torch.bfloat16)
        for kind in args.kinds:
            if over_budget(args):
                entry["workloads"][kind] = {"skipped": f"time budget of {args.budget_s:.0f} s reached"}
                log(f"{key} {kind}: skipped (time budget)")
                continue
            try:
                entry["workloads"][kind] = bench_workload(ctx, m, eng, kind, refs[kind])
            except Exception as exc:  # noqa: BLE001 - one GPU session: record it, go on with the rest
                traceback.print_exc()
                entry["workloads"][kind] = {"skipped": f"error: {exc!r}"[:300]}
                check(ctx, f"{key} {kind}: ran", False, f"{exc!r}"[:300])
                _free(device)
            write_outputs(res, out)
        m = eng = None
        _free(device)
    res["status"] = "complete"
    write_outputs(res, out)
    log(f"wrote {out}")
    print("\n".join(render_body(res)))
    return 0 if all(c["ok"] for c in ctx.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
