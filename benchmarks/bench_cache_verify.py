"""What ``wrap --verify`` costs: hashing a Hugging Face cache blob against copying (or linking) it.

``vhctl wrap`` takes a cache blob's name as its sha256 and only copies it (``copy_file``: in the
kernel, no hashing); ``--verify`` copies and hashes it in one read (``copy_hashing``: a second
thread hashes behind the copy). With ``--link`` the difference is a hard link against a hard link
plus a full read. This script times both pairs side by side, in one process, on one file of
``--mb`` MiB (default 512), interleaved, and writes the ratios with every repetition to
``benchmarks/results/cache-verify.json`` (``common.Recorder``). The file is in the page cache (it was just written), as
a blob downloaded shortly before a wrap is; from a cold disk both sides read it once.

    python benchmarks/bench_cache_verify.py [--mb 512] [--reps 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402

from vhctl.io.hashing import copy_file, copy_hashing, hash_stable  # noqa: E402


def _make_blob(folder: Path, mib: int) -> tuple[Path, str]:
    """A file of ``mib`` MiB of random bytes named like a cache blob; its path and sha256."""
    digest = hashlib.sha256()
    tmp = folder / "blob.tmp"
    with open(tmp, "wb") as handle:
        for _ in range(mib):
            chunk = os.urandom(1024 * 1024)
            digest.update(chunk)
            handle.write(chunk)
    blob = folder / digest.hexdigest()
    tmp.rename(blob)
    return blob, digest.hexdigest()


def _timed(action: Callable[[Path], object], target: Path) -> float:
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    action(target)
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the test file (default: a temp dir)"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    recorder = common.Recorder("cache-verify", ["vhctl/io/hashing.py"])
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vhctl-verify-") as tmp:
        folder = Path(tmp)
        blob, digest = _make_blob(folder, args.mb)
        dst = folder / "model.safetensors"

        def link_and_hash(path: Path) -> None:
            os.link(blob, path)
            assert hash_stable(path) == digest

        def hash_copy(path: Path) -> None:
            assert copy_hashing(blob, path) == digest

        sides = {
            "copy": lambda path: copy_file(blob, path),  # plain wrap: the name is the digest
            "copy_and_hash": hash_copy,  # wrap --verify
            "link": lambda path: os.link(blob, path),  # wrap --link
            "link_and_hash": link_and_hash,  # wrap --link --verify
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        for action in sides.values():  # one warm-up each, not recorded
            _timed(action, dst)
        for _ in range(args.reps):
            for name, action in sides.items():
                times[name].append(_timed(action, dst))
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "file_mib": args.mb,
        "repetitions_s": times,
        "median_s": median,
        "ratio_verify_copy": median["copy_and_hash"] / median["copy"],
        "ratio_verify_link": median["link_and_hash"] / max(median["link"], 1e-9),
        "hash_gib_per_s": args.mb / 1024 / (median["link_and_hash"] - median["link"]),
        "copy_gib_per_s": args.mb / 1024 / median["copy"],
    }
    recorder.write(result)
    print(
        f"{args.mb} MiB: copy {median['copy']:.3f} s, copy+hash {median['copy_and_hash']:.3f} s "
        f"(ratio {result['ratio_verify_copy']:.2f}x); link {median['link'] * 1000:.2f} ms, link+hash "
        f"{median['link_and_hash']:.3f} s (ratio {result['ratio_verify_link']:.0f}x); load {load_before[0]:.2f} -> "
        f"{os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
