"""Workload 3: make-ref peak memory on GPT-2 124M with 0, 4 and 11 shared layers.

Library: ``vhctl.create_reference_model`` against TRL's ``create_reference_model``, each case in a fresh
interpreter (mem_child.py). Target: peak RSS - baseline <= 1.05 x (model bytes + unshared bytes), the
baseline being the RSS after the imports, before the model is loaded.
CLI: ``vhctl make-ref CKPT --shared N`` as a whole process (file level), peak RSS from ``/usr/bin/time -v``;
the reference folder is checked to hold only the unshared tensors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MIB = 2**20


def child(engine: str, shared: int, ckpt: Path, base: Path) -> dict[str, Any]:
    res = common.run_timed(
        [sys.executable, str(common.BENCH / "mem_child.py"), engine, str(shared), str(ckpt), str(base)],
        env=common.thread_env(),
    )
    data = json.loads(res["stdout"].decode().strip().splitlines()[-1])
    data["wall_s"] = res["wall_s"]
    data["time_v_peak_mib"] = res["peak_mib"]
    return data


def check_reference_folder(ref: Path, policy: Path) -> dict[str, Any]:
    """The reference's weight file holds exactly the policy tensors it does not share."""
    from safetensors import safe_open

    manifest = json.loads((ref / "vhctl.json").read_text())
    shared = set(manifest["reference"]["shared_tensors"])
    stored: dict[str, int] = {}
    for path in ref.glob("model*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                stored[key] = 1
    policy_names: set[str] = set()
    for path in policy.glob("model*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            policy_names.update(handle.keys())
    weight_bytes = sum(p.stat().st_size for p in ref.glob("model*.safetensors"))
    return {
        "stored_tensors": len(stored),
        "shared_tensors": len(shared),
        "overlap": len(shared & set(stored)),
        "covers_policy": set(stored) | shared == policy_names,
        "weight_file_bytes": weight_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--shared", default="0,4,11")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args(argv)
    recorder = common.Recorder("memory", common.CODE["make-ref"], argv)
    ckpt = common.WORK / "ckpt" / args.model
    base = common.WORK / "models" / args.model
    out_root = common.WORK / "refs"
    cases: dict[str, Any] = {}
    for n in [int(x) for x in args.shared.split(",")]:
        runs: dict[str, list[dict[str, Any]]] = {"vhctl": [], "trl": [], "cli": []}
        for rep in range(args.reps):
            order = ["vhctl", "trl", "cli"] if rep % 2 == 0 else ["cli", "trl", "vhctl"]
            for who in order:
                if who == "cli":
                    out = out_root / f"ref{n}"
                    shutil.rmtree(out, ignore_errors=True)
                    vhctl_bin = str(Path(sys.executable).with_name("vhctl"))
                    res = common.run_timed(
                        [
                            vhctl_bin,
                            "-q",
                            "make-ref",
                            str(ckpt),
                            "--shared",
                            str(n),
                            "--out",
                            str(out),
                            "--force",
                        ],
                        env=common.thread_env(),
                    )
                    runs["cli"].append(
                        {
                            "wall_s": res["wall_s"],
                            "peak_mib": res["peak_mib"],
                            "folder": check_reference_folder(out, ckpt),
                        }
                    )
                else:
                    runs[who].append(child(who, n, ckpt, base))
            last = runs["vhctl"][-1]
            print(
                f"  [make-ref N={n} rep {rep + 1}/{args.reps}] vhctl lib peak "
                f"{(last['peak_total_kib'] - last['baseline_kib']) / 1024:.0f} MiB over baseline, TRL "
                f"{(runs['trl'][-1]['peak_total_kib'] - runs['trl'][-1]['baseline_kib']) / 1024:.0f} MiB, "
                f"CLI whole process {runs['cli'][-1]['peak_mib']:.0f} MiB",
                flush=True,
            )
        summary: dict[str, Any] = {}
        for who in ("vhctl", "trl"):
            rs = runs[who]
            summary[who] = {
                "baseline_mib": common.median_range([r["baseline_kib"] / 1024 for r in rs]),
                "peak_mib": common.median_range([r["peak_total_kib"] / 1024 for r in rs]),
                "over_baseline_mib": common.median_range(
                    [(r["peak_total_kib"] - r["baseline_kib"]) / 1024 for r in rs]
                ),
                "create_over_before_mib": common.median_range(
                    [
                        ((r["peak_create_kib"] or r["peak_total_kib"]) - r["before_create_kib"]) / 1024
                        for r in rs
                    ]
                ),
                "model_mib": rs[0]["model_bytes"] / MIB,
                "unshared_mib": rs[0]["unshared_bytes"] / MIB,
                "copied_mib": rs[0]["copied_bytes"] / MIB,
                "limit_mib": 1.05 * (rs[0]["model_bytes"] + rs[0]["unshared_bytes"]) / MIB,
                "create_s": common.median_range([r["create_s"] for r in rs]),
                "wall_s": common.median_range([r["wall_s"] for r in rs]),
                "frozen": all(r["ref_frozen"] for r in rs),
            }
        summary["cli"] = {
            "peak_mib": common.median_range([r["peak_mib"] for r in runs["cli"]]),
            "wall_s": common.median_range([r["wall_s"] for r in runs["cli"]]),
            "folder": runs["cli"][-1]["folder"],
            "unshared_mib": summary["vhctl"]["unshared_mib"],
        }
        cases[str(n)] = summary
    shutil.rmtree(out_root, ignore_errors=True)
    recorder.write({"model": args.model, "cases": cases, "reps": args.reps})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
