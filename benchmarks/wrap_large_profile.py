"""A timeline of one ``wrap`` or ``make-ref`` run, in-process: when each phase ends, wall and CPU seconds.

    python wrap_large_profile.py wrap SRC OUT [--link]
    python wrap_large_profile.py make-ref POLICY

Used by bench_wrap_large.py to explain a missed target: which phase took the time, and whether the
process was using its cores (CPU seconds close to twice the wall on 2 cores) or waiting (for the
disk, or for a CPU that other processes hold). The phases are marked by wrapping vhctl's own
functions; nothing in vhctl is changed.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
LINES: list[str] = []


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mark(what: str) -> None:
    LINES.append(f"{time.perf_counter() - T0:7.2f} s wall {_cpu():7.2f} s CPU  {what}")
    print(LINES[-1], flush=True)


def _around(owner: Any, name: str, label: str) -> None:
    real: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} starts")
        result = real(*args, **kwargs)
        mark(f"{label} done")
        return result

    setattr(owner, name, timed)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    what, args = sys.argv[1], sys.argv[2:]
    import vhctl.io.files as files

    _around(files, "fsync_tree", "fsync of the output")
    if what == "wrap":
        import vhctl.io.transfer as transfer
        import vhctl.ops.wrap as wrap

        mark("vhctl.ops.wrap imported (light: no torch yet)")
        import atexit

        atexit.register(mark, "interpreter exit starts")
        _around(wrap, "_plan", "plan (imports torch + transformers, reads config and heads)")
        _around(transfer.FileTransfers, "digest", "waiting for a weight file's copy + digest")
        _around(wrap, "finish_manifest", "manifest")
        wrap.wrap_model(args[0], args[1], init="normal", seed=0, force=True, link="--link" in args)
    else:
        import vhctl.ops.make_ref as make_ref

        mark("vhctl.ops.make_ref imported (light: no torch yet)")
        import atexit

        atexit.register(mark, "interpreter exit starts")
        _around(make_ref._ReferenceWeights, "start", "start writing + hashing on the guessed split")
        _around(make_ref, "_shared_names", "layer split (imports torch + transformers modeling, meta model)")
        _around(make_ref._ReferenceWeights, "finish", "waiting for the stored tensors and shared_sha256")
        _around(make_ref, "finish_manifest", "manifest")
        make_ref.make_reference(args[0], num_shared_layers=18, force=True)
    mark("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
