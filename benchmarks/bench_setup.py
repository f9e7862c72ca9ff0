"""Set-up for a benchmark run: the models built from configs and their vhctl checkpoints (under _work/).

Each benchmark records its own machine, versions and load in its result file (``common.Recorder``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(common.MODELS))
    args = parser.parse_args(argv)
    import transformers

    for name in args.models.split(","):
        folder = common.WORK / "models" / name
        stamp = folder / "BENCH-STAMP.json"
        want = {"model": name, "transformers": transformers.__version__, "seed": 0}
        if not (stamp.is_file() and json.loads(stamp.read_text()) == want):
            print(f"  building {name} from its config (random weights, seed 0)", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            common.build_model_dir(name, folder)
            stamp.write_text(json.dumps(want))
        ckpt = common.WORK / "ckpt" / name
        vhctl_bin = str(Path(sys.executable).with_name("vhctl"))
        subprocess.run(
            [vhctl_bin, "-q", "wrap", str(folder), "--out", str(ckpt), "--seed", "0", "--force"],
            check=True,
            env=common.thread_env(),
        )
        params, nbytes = common.param_count_and_bytes(folder)
        print(
            f"  {name}: {params / 1e6:.1f} M parameters, {nbytes / 2**20:.0f} MiB; checkpoint {ckpt}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
