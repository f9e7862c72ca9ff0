"""Workload 4: wrap a local safetensors GPT-2 124M, whole processes side by side, interleaved.

TRL (from_pretrained + save_pretrained), the copy + head-file floor, ``vhctl wrap`` and ``vhctl wrap --link``
(plus the floor with fsync, for reference: ``vhctl wrap`` flushes what it writes to disk). Wall time and peak
RSS from ``/usr/bin/time -v``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

VARIANTS = ("trl", "copy", "copy-fsync", "vhctl", "vhctl-link")


def command(variant: str, src: Path, out: Path) -> list[str]:
    py = sys.executable
    if variant in ("trl", "copy", "copy-fsync"):
        return [py, str(common.BENCH / "wrap_child.py"), variant, str(src), str(out)]
    vhctl_bin = str(Path(py).with_name("vhctl"))
    cmd = [vhctl_bin, "-q", "wrap", str(src), "--out", str(out), "--seed", "0"]
    return cmd + (["--link"] if variant == "vhctl-link" else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    recorder = common.Recorder("wrap", common.CODE["wrap"], argv)
    src = common.WORK / "models" / args.model
    root = common.WORK / "wrap_out"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for path in src.iterdir():  # same page-cache state for everyone: the source is read once first
        path.read_bytes()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    linked = None
    for rep in range(args.reps):
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            out = root / variant
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            res = common.run_timed(command(variant, src, out), env=common.thread_env())
            runs[variant].append({"wall_s": res["wall_s"], "peak_mib": res["peak_mib"]})
            if variant == "vhctl-link":
                linked = (out / "model.safetensors").stat().st_nlink > 1 and (
                    (out / "model.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino
                )
            shutil.rmtree(out, ignore_errors=True)
        print(
            f"  [wrap rep {rep + 1}/{args.reps}] "
            + ", ".join(
                f"{v} {runs[v][-1]['wall_s']:.2f} s {runs[v][-1]['peak_mib']:.0f} MiB" for v in VARIANTS
            ),
            flush=True,
        )
    shutil.rmtree(root, ignore_errors=True)
    # what the processes spend before touching a byte: their imports alone
    imports = {
        "copy (torch + safetensors)": "import torch, safetensors.torch",
        "vhctl wrap (its imports)": "import vhctl.cli.app, vhctl.ops.wrap, transformers; "
        "from transformers import AutoConfig; AutoConfig.for_model('gpt2')",
        "trl": "from trl.experimental.ppo import AutoModelForCausalLMWithValueHead",
    }
    import_s = {}
    for label, code in imports.items():
        walls = [
            common.run_timed([sys.executable, "-c", code], env=common.thread_env())["wall_s"]
            for _ in range(max(1, args.reps))
        ]
        import_s[label] = common.median_range(walls)
    copy_walls = [r["wall_s"] for r in runs["copy"]]
    summary = {
        v: {
            "wall_s": common.median_range([r["wall_s"] for r in rs]),
            "peak_mib": common.median_range([r["peak_mib"] for r in rs]),
            "vs_copy": common.median_range([r["wall_s"] / c for r, c in zip(rs, copy_walls, strict=True)]),
        }
        for v, rs in runs.items()
    }
    _, model_bytes = common.param_count_and_bytes(src)
    recorder.write(
        {
            "model": args.model,
            "reps": args.reps,
            "variants": summary,
            "model_mib": model_bytes / 2**20,
            "link_is_hardlink": linked,
            "import_s": import_s,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
