"""The sections of RESULTS.md added by issue #26 (wrap's cost as models grow, the scoring profile)
and the blocks of the docs that ``report.py`` generates from the result files.

A docs page holds a generated block between two marker lines::

    <!-- report.py: NAME -->
    ...generated text...
    <!-- /report.py: NAME -->

``report.py`` rewrites what lies between them from ``benchmarks/results/``; nothing else of the page
is touched, and a figure outside such a block has to be one that RESULTS.md holds
(``tests/project/test_docs_figures.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import fmt_mr

DOCS = (common.ROOT / "README.md", common.ROOT / "docs" / "performance.md")
MARK = re.compile(r"^<!-- report\.py: ([\w-]+) -->$")


def _verdict(ok: bool, miss: str = "") -> str:
    return "**met**" if ok else f"**missed**{': ' + miss if miss else ''}"


# ---------------------------------------------------------------------------------------------- 11. wrap scaling


def section_wrap_scaling(res: dict[str, Any], targets: list[list[str]], lines: list[str]) -> None:
    sizes, gb, runs, fit = res["sizes"], res["gb"], res["runs"], res["fit"]
    small, large = sizes[0], sizes[-1]
    lines += [
        "## 11. wrap's cost as models grow",
        "",
        "GPT-2 shapes with random weights, float32: "
        + ", ".join(f"{s} ({gb[s]['single']:.2f} GB)" for s in sizes)
        + f", each as one `model.safetensors` and as {res['shards']} shards. Whole processes under `/usr/bin/time -v`, "
        f"{res['reps']} interleaved repetitions, medians (min–max) of the wall time; the source files are in the "
        "page cache for all. copy = `cp -r SRC DST && sync -f DST`; hash = `hashlib.sha256` over the same files "
        "on one core; wrap = `vhctl wrap SRC --out DST --init normal --seed 0 --force`.",
        "",
        "| layout | size | GB | copy s | hash s | wrap s | wrap / max(copy, hash) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for layout in ("single", "sharded"):
        for size in sizes:
            walls = {k: common.median_range([r["wall_s"] for r in runs[f"{k}-{size}-{layout}"]]) for k in
                     ("copy", "hash", "wrap")}  # fmt: skip
            ratio = walls["wrap"]["median"] / max(walls["copy"]["median"], walls["hash"]["median"])
            lines.append(
                f"| {layout} | {size} | {gb[size][layout]:.2f} | {fmt_mr(walls['copy'], '{:.2f}')} | "
                f"{fmt_mr(walls['hash'], '{:.2f}')} | {fmt_mr(walls['wrap'], '{:.2f}')} | {ratio:.2f}x |"
            )
    imp = fit["import_s"]
    lines += [
        "",
        f"Each command as a line through its two medians, t = fixed + slope x GB ({small} and {large}); the slope "
        "per repetition pairs the i-th run of each size. `python -c 'import torch, transformers, safetensors'` "
        f"takes {imp:.2f} s, `python -c pass` {fit['python_s']:.2f} s in the same run.",
        "",
        "| layout | command | slope s/GB | slope per repetition | fixed s | CPU slope s/GB | CPU fixed s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for layout, f in fit["layouts"].items():
        for kind, k in f["fits"].items():
            lines.append(
                f"| {layout} | {kind} | {k['slope_s_per_gb']:.2f} | {fmt_mr(k['slope_per_rep'], '{:.2f}')} | "
                f"{k['fixed_s']:.2f} | {k['cpu_slope_s_per_gb']:.2f} | {k['cpu_fixed_s']:.2f} |"
            )
    lines.append("")
    for layout, f in fit["layouts"].items():
        k = f["fits"]
        work = k["copy"]["cpu_slope_s_per_gb"] + k["hash"]["cpu_slope_s_per_gb"]
        lines.append(
            f"- {layout}: wrap's CPU time grows {k['wrap']['cpu_slope_s_per_gb']:.2f} s/GB, against {work:.2f} s/GB "
            "for the copy's and the hash's together (the work it does on each byte); a wall slope above the "
            "floors' with a CPU slope near that sum is waiting for a core or the disk, not extra work."
        )
    lines.append("")
    for layout, f in fit["layouts"].items():
        k = f["fits"]
        wrap, floor = (
            k["wrap"]["slope_s_per_gb"],
            max(k["copy"]["slope_s_per_gb"], k["hash"]["slope_s_per_gb"]),
        )
        targets.append([
            f"11. wrap's marginal cost ({layout}): slope <= 1.1x max(copy, hash) per GB",
            f"{wrap:.2f} s/GB vs {floor:.2f} s/GB = {f['slope_ratio']:.2f}x",
            _verdict(f["slope_ratio"] <= 1.1, f"{f['slope_ratio'] / 1.1:.0%} of the allowed slope"),
        ])  # fmt: skip
        fixed = k["wrap"]["fixed_s"]
        targets.append([
            f"11. wrap's fixed part ({layout}) <= the import of torch + transformers + 0.5 s",
            f"{fixed:.2f} s vs {imp:.2f} + 0.5 s",
            _verdict(fixed <= f["fixed_limit_s"], f"{fixed - f['fixed_limit_s']:.2f} s over"),
        ])  # fmt: skip
        ratio, bare = f["large_ratio"], f["large_ratio_without_fixed"]
        if ratio <= 1.2:
            why = ""
        elif bare <= 1.2:
            why = (f"the fixed part ({fixed:.2f} s) is what keeps it above 1.2x: without it the {large} wrap would "
                   f"take {bare:.2f}x max(copy, hash)")  # fmt: skip
        else:
            why = (f"not only the fixed part: without its {fixed:.2f} s the {large} wrap would still take "
                   f"{bare:.2f}x max(copy, hash), from its slope")  # fmt: skip
        targets.append([
            f"11. wrap at {large} ({layout}, {gb[large][layout]:.1f} GB) <= 1.2x max(copy, hash)",
            f"{ratio:.2f}x", _verdict(ratio <= 1.2, why),
        ])  # fmt: skip


# ---------------------------------------------------------------------------------------------- 12. profile


def section_profile(res: dict[str, Any], targets: list[list[str]], lines: list[str]) -> None:
    models = res["models"]
    first = next(iter(models.values()))
    lines += [
        "## 12. Where eager scoring spends its CPU time",
        "",
        f"`torch.profiler` (CPU) over one eager scoring pass of the first {first['texts']} texts of workload 1 "
        f"(batch {first['batch_size']}, the path of `vhctl score`, after a warm-up pass); shares of the "
        "operators' self CPU time. matmul = "
        + ", ".join(f"`{n}`" for n in res["categories"]["matmul"])
        + "; attention = "
        + res["categories"]["attention"]
        + ".",
        "",
        "| | " + " | ".join(m["label"] for m in models.values()) + " |",
        "| --- |" + " ---: |" * len(models),
    ]
    for cat in ("matmul", "attention", "other"):
        lines.append(f"| {cat} | " + " | ".join(f"{m['shares'][cat]:.0%}" for m in models.values()) + " |")
    lines += ["", "The largest operators (self CPU time, share):", ""]
    for m in models.values():
        total = m["ops_self_cpu_us_total"]
        top = sorted(m["ops"].items(), key=lambda kv: (-kv[1]["self_cpu_us"], kv[0]))[:6]
        lines.append(
            f"- {m['label']}: " + ", ".join(f"`{k}` {o['self_cpu_us'] / total:.0%}" for k, o in top) + "."
        )
    lines.append("")
    bound = res["matmul_bound_share"]
    for m in models.values():
        share = m["shares"]["matmul"]
        targets.append([
            f"12. eager scoring is matmul-bound (matmuls >= {bound:.0%} of operator time), {m['label']}",
            f"{share:.0%}",
            "**met**" if share >= bound else f"**missed**: {1 - share:.0%} of the time is outside the matmuls",
        ])  # fmt: skip


EXTRA: dict[str, Callable[[dict[str, Any], list[list[str]], list[str]], None]] = {
    "wrap-scaling": section_wrap_scaling,
    "profile-scoring": section_profile,
}


# ---------------------------------------------------------------------------------------------- docs blocks


def _stale(res: dict[str, Any]) -> str:
    status = common.code_status(res)[0]
    return "" if status == "current" else f" ({status})"


def _headline(results: dict[str, dict[str, Any]]) -> list[str]:
    rows: list[str] = []
    sc = results.get("scoring")
    if sc:
        for m in sc["data"]["models"].values():
            for key, what in (("mixed", "mixed-length texts"), ("best_of_n", "best-of-n (shared prompts)")):
                if key in m:
                    r = m[key]
                    rows.append(
                        f"| scoring {what}, {m['label']}, tokens/s | 1x | {r['speedup']['median']:.2f}x "
                        f"(skipping work alone allows {r['flop_bound']:.2f}x){_stale(sc)} |"
                    )
        diff = max(r["max_abs_diff"] for m in sc["data"]["models"].values() for k, r in m.items()
                   if k in ("mixed", "best_of_n"))  # fmt: skip
        rows.append(f"| values (float32) | | within {diff:.1e} of TRL's{_stale(sc)} |")
    mem = results.get("memory")
    if mem:
        n = max(mem["data"]["cases"], key=int)
        c = mem["data"]["cases"][n]
        rows.append(
            f"| reference sharing {n} layers: peak RAM above the imports | "
            f"+{c['trl']['over_baseline_mib']['median']:.0f} MiB | +{c['vhctl']['over_baseline_mib']['median']:.0f} "
            f"MiB{_stale(mem)} |"
        )
        rows.append(
            f"| reference sharing {n} layers: on disk | | "
            f"{c['cli']['folder']['weight_file_bytes'] / 2**20:.0f} MiB (only the unshared tensors){_stale(mem)} |"
        )
    wr = results.get("wrap")
    if wr:
        v = wr["data"]["variants"]
        trl = v["trl"]["wall_s"]["median"]
        rows.append(
            f"| wrap a local GPT-2 124M (whole process): wall time, peak RSS | 1x, "
            f"{v['trl']['peak_mib']['median']:.0f} MiB | {v['vhctl']['wall_s']['median'] / trl:.2f}x TRL's time, "
            f"{v['vhctl']['peak_mib']['median']:.0f} MiB (`--link`: {v['vhctl-link']['wall_s']['median'] / trl:.2f}x)"
            f"{_stale(wr)} |"
        )
    st = results.get("startup")
    if st:
        for n, t in st["data"]["first_line"].items():
            rows.append(
                f"| process start to the first value, {n} line(s) | 1x | {t['ratio']['median']:.2f}x TRL's time"
                f"{_stale(st)} |"
            )
    if not rows:
        return ["No scoring, make-ref, wrap or start-up result is committed yet."]
    loads = [(name, res) for name, res in results.items() if name in ("scoring", "memory", "wrap", "startup")]
    cores = loads[0][1]["machine"]["cores"]
    note = (
        f"Load average at the start of each run ({cores} cores): "
        + ", ".join(f"{name} {res['load']['before'][0]:.1f}" for name, res in loads)
        + ". Where it is above the core count, other processes held the cores while it ran, and the ratios "
        "move with them: `benchmarks/RESULTS.md` has every repetition's spread."
    )
    return ["| | TRL 1.12.0 | vhctl |", "| --- | --- | --- |", *rows, "", note]


def _section_block(name: str, results: dict[str, dict[str, Any]]) -> list[str]:
    """A section's tables and its target rows, as RESULTS.md has them, headings dropped."""
    res = results.get(name)
    if res is None:
        return [f"No `benchmarks/results/{name}.json` is committed yet."]
    targets: list[list[str]] = []
    lines: list[str] = []
    EXTRA[name](res["data"], targets, lines)
    body = [ln for ln in lines[2:] if not ln.startswith("## ")]
    return [
        common.provenance(res), "", *body, "| target | measured | verdict |", "| --- | --- | --- |",
        *[f"| {t.split('. ', 1)[1]} | {m} | {v} |" for t, m, v in targets],
    ]  # fmt: skip


def blocks(results_dir: Path) -> dict[str, list[str]]:
    """Every generated block's lines, by name."""
    results = {
        name: res
        for name in ("scoring", "memory", "wrap", "startup", *EXTRA)
        if (res := common.load_result(name, results_dir)) is not None
    }
    return {
        "headline": _headline(results),
        "wrap-scaling": _section_block("wrap-scaling", results),
        "profile": _section_block("profile-scoring", results),
    }


def replace_blocks(text: str, generated: dict[str, list[str]], where: str = "") -> str:
    """``text`` with each marked block's inside replaced; an unknown or unclosed block is an error."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        match = MARK.match(lines[i])
        i += 1
        if not match:
            continue
        name = match.group(1)
        if name not in generated:
            raise SystemExit(f"{where}: unknown generated block {name!r} (known: {', '.join(generated)})")
        end = f"<!-- /report.py: {name} -->"
        try:
            close = lines.index(end, i)
        except ValueError:
            raise SystemExit(f"{where}: block {name!r} has no closing {end}") from None
        out += ["", *generated[name], "", end]
        i = close + 1
    return "\n".join(out)


def rewrite(generated: dict[str, list[str]], *, write: bool, docs: tuple[Path, ...] = DOCS) -> list[Path]:
    """The docs pages whose blocks differ from ``generated`` (rewritten when ``write``)."""
    changed = []
    for path in docs:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        new = replace_blocks(text, generated, str(path))
        if new != text:
            changed.append(path)
            if write:
                path.write_text(new, encoding="utf-8")
    return changed
