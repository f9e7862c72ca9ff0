"""wrap's cost as models grow (issue #26): its seconds per GB against a copy's and a hash's.

    python benchmarks/bench_wrap_scaling.py [--reps 3] [--sizes 124M,774M] [--keep]

Builds GPT-2 (124M) and GPT-2-large (774M) shapes with random weights (``large_model.py``), each as
one ``model.safetensors`` and as 5 shards, and runs as whole processes, interleaved (the order
rotates each repetition), in the same run:

- ``cp -r SRC DST && sync -f DST`` (the copy), ``hashlib.sha256`` over the same files on one core
  (the hash), ``vhctl wrap SRC --out DST --init normal --seed 0 --force`` (the wrap), per size and
  layout;
- ``python -c 'import torch, transformers, safetensors'`` (the import floor) and ``python -c pass``.

From two sizes each command's time is a line ``t = fixed + slope x GB``: the slope is its marginal
seconds per GB, the fixed part what it pays at 0 bytes. The targets: wrap's slope within 1.1x of
max(copy slope, hash slope); wrap's fixed part no larger than the import floor + 0.5 s; and, at the
larger size, wrap's time against max(copy, hash) -- with the share of it the fixed part explains.
Slopes are also taken per repetition (the i-th run of each size paired) for their spread. The
result goes to ``benchmarks/results/wrap-scaling.json``; the big files are removed at the end unless
``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import large_model  # noqa: E402
from bench_wrap_large import HASH_CODE, interleaved  # noqa: E402

ROOT = common.WORK / "scaling"
LAYOUTS = ("single", "sharded")
SHARDS = 5
KINDS = ("copy", "hash", "wrap")


def build(size: str) -> dict[str, Path]:
    """The size's model as one file and as 5 shards (kept between runs while their stamp matches)."""
    import transformers

    root = ROOT / size
    paths = {"single": root / "single", "sharded": root / "sharded"}
    stamp = root / "STAMP.json"
    want = {"shape": large_model.SIZES[size], "transformers": transformers.__version__, "seed": 0,
            "shards": SHARDS}  # fmt: skip
    if not (stamp.is_file() and json.loads(stamp.read_text()) == want and paths["sharded"].is_dir()):
        shutil.rmtree(root, ignore_errors=True)
        print(
            f"  building the {size} GPT-2 shape (random weights, seed 0) and its {SHARDS}-shard copy",
            flush=True,
        )
        large_model.build_single(paths["single"], shape=large_model.SIZES[size])
        large_model.build_sharded(paths["single"], paths["sharded"], shards=SHARDS)
        stamp.write_text(json.dumps(want))
    return paths


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def commands(paths: dict[str, dict[str, Path]], out: Path) -> dict[str, list[str]]:
    py, vhctl = sys.executable, str(Path(sys.executable).with_name("vhctl"))
    wrap = [vhctl, "-q", "wrap", "--init", "normal", "--seed", "0", "--force", "--out", str(out)]
    cmds = {
        "import": [py, "-c", "import torch, transformers, safetensors"],
        "python": [py, "-c", "pass"],
    }
    for size, layouts in paths.items():
        for layout, src in layouts.items():
            cmds[f"copy-{size}-{layout}"] = ["bash", "-c", f"cp -r {src} {out} && sync -f {out}"]
            cmds[f"hash-{size}-{layout}"] = [py, "-c", HASH_CODE, str(src)]
            cmds[f"wrap-{size}-{layout}"] = [*wrap, str(src)]
    return cmds


def line(x: tuple[float, float], y: tuple[float, float]) -> tuple[float, float]:
    """(fixed, slope) of the line through two points."""
    slope = (y[1] - y[0]) / (x[1] - x[0])
    return y[0] - slope * x[0], slope


def analyse(
    runs: dict[str, list[dict[str, float]]], gb: dict[str, dict[str, float]], sizes: list[str]
) -> dict[str, Any]:
    """Per layout and kind: fixed part and slope from the medians, and per-repetition slopes."""
    small, large = sizes[0], sizes[-1]
    med = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    out: dict[str, Any] = {"import_s": med["import"], "python_s": med["python"], "layouts": {}}
    for layout in LAYOUTS:
        x = (gb[small][layout], gb[large][layout])
        fits: dict[str, Any] = {}
        for kind in KINDS:
            a, b = f"{kind}-{small}-{layout}", f"{kind}-{large}-{layout}"
            fixed, slope = line(x, (med[a], med[b]))
            cpu_fixed, cpu_slope = line(x, (cpu[a], cpu[b]))
            per_rep = [
                line(x, (ra["wall_s"], rb["wall_s"]))[1] for ra, rb in zip(runs[a], runs[b], strict=True)
            ]
            fits[kind] = {
                "fixed_s": fixed,
                "slope_s_per_gb": slope,
                "slope_per_rep": common.median_range(per_rep),
                "cpu_fixed_s": cpu_fixed,
                "cpu_slope_s_per_gb": cpu_slope,
                "wall_small_s": med[a],
                "wall_large_s": med[b],
            }
        floor_slope = max(fits["copy"]["slope_s_per_gb"], fits["hash"]["slope_s_per_gb"])
        floor_large = max(fits["copy"]["wall_large_s"], fits["hash"]["wall_large_s"])
        wrap = fits["wrap"]
        out["layouts"][layout] = {
            "gb": {small: x[0], large: x[1]},
            "fits": fits,
            "slope_ratio": wrap["slope_s_per_gb"] / floor_slope,
            "fixed_limit_s": med["import"] + 0.5,
            "large_ratio": wrap["wall_large_s"] / floor_large,
            # the ratio at the larger size had wrap no fixed part: what the per-GB work alone gives
            "large_ratio_without_fixed": (wrap["wall_large_s"] - wrap["fixed_s"]) / floor_large,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", default="124M,774M", help="two or more of " + ", ".join(large_model.SIZES))
    parser.add_argument("--keep", action="store_true", help="keep the built models for the next run")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    if len(sizes) < 2 or any(s not in large_model.SIZES for s in sizes):
        parser.error(f"--sizes: two or more of {', '.join(large_model.SIZES)}")
    recorder = common.Recorder("wrap-scaling", common.CODE["wrap"], argv)
    ROOT.mkdir(parents=True, exist_ok=True)
    try:
        paths = {size: build(size) for size in sizes}
        for layouts in paths.values():  # the same page cache for every command
            for folder in layouts.values():
                for path in folder.iterdir():
                    with open(path, "rb", buffering=0) as handle:
                        while handle.read(64 << 20):
                            pass
        gb = {size: {layout: weight_bytes(folder) / 1e9 for layout, folder in layouts.items()}
              for size, layouts in paths.items()}  # fmt: skip
        cmds = commands(paths, ROOT / "out")
        runs = interleaved(cmds, {name: common.thread_env() for name in cmds}, args.reps, ROOT / "out")
        fit = analyse(runs, gb, sizes)
        params = {size: common.param_count_and_bytes(layouts["single"])[0] for size, layouts in paths.items()}
        recorder.write({"reps": args.reps, "sizes": sizes, "shards": SHARDS, "gb": gb, "params": params,
                        "runs": runs, "fit": fit})  # fmt: skip
        for layout, f in fit["layouts"].items():
            w = f["fits"]["wrap"]
            print(f"  {layout}: wrap {w['slope_s_per_gb']:.2f} s/GB ({f['slope_ratio']:.2f}x the floor's), fixed "
                  f"{w['fixed_s']:.2f} s (limit {f['fixed_limit_s']:.2f}), at {sizes[-1]} {f['large_ratio']:.2f}x")  # fmt: skip
    finally:
        shutil.rmtree(ROOT / "out", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(ROOT, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
