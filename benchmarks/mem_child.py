"""One make-ref memory case in a fresh interpreter (run by bench_memory.py; prints one JSON line).

    python mem_child.py {vhctl|trl} SHARED CKPT BASE

Baseline = resident set size after the imports (torch, transformers, the library, and the model's
``transformers.models.<type>.modeling_<type>`` module, ~100 MiB by itself), before the model is loaded. The model is loaded, the
reference made with ``create_reference_model(model, num_shared_layers=SHARED)``, and the peak resident set
size (VmHWM) read at the end; the peak of the create step alone is read after resetting VmHWM when the
kernel allows it (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def storages(module) -> dict[int, int]:
    """data_ptr -> bytes of every parameter and buffer storage of ``module`` (each counted once)."""
    out: dict[int, int] = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        storage = tensor.untyped_storage()
        out[storage.data_ptr()] = storage.nbytes()
    return out


def main() -> int:
    engine, shared_arg, ckpt, base = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    shared = None if shared_arg == "none" else int(shared_arg)
    import torch
    import transformers  # noqa: F401

    if engine == "vhctl":
        import vhctl.modeling.causal  # noqa: F401
        import vhctl.modeling.reference  # noqa: F401
        from vhctl import AutoModelForCausalLMWithValueHead, create_reference_model

        source = ckpt
    else:
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead
        from trl.experimental.utils import create_reference_model

        source = base
    import importlib

    model_type = json.loads((base / "config.json").read_text())["model_type"]
    importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")  # the model's code
    common.set_threads()
    baseline = common.rss_now_kib()
    t0 = time.perf_counter()
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(source))
    with torch.no_grad():  # make the weights resident, as they are in a training process (mmap'd otherwise)
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.sum()
    load_s = time.perf_counter() - t0
    after_load = common.rss_now_kib()
    peak_load = common.rss_peak_kib()
    reset = common.reset_peak_rss()
    before_create = common.rss_now_kib()
    t0 = time.perf_counter()
    ref = create_reference_model(model, num_shared_layers=shared)
    create_s = time.perf_counter() - t0
    peak_create = common.rss_peak_kib() if reset else None
    after_create = common.rss_now_kib()

    model_st = storages(model)
    ref_st = storages(ref)
    model_bytes = sum(model_st.values())
    copied_bytes = sum(n for ptr, n in ref_st.items() if ptr not in model_st)
    shared_bytes = sum(n for ptr, n in ref_st.items() if ptr in model_st)
    # what the reference must hold on its own: every parameter/buffer of the model minus the shared ones
    unshared_bytes = model_bytes - shared_bytes
    ok_frozen = all(not p.requires_grad for p in ref.parameters())
    print(
        json.dumps(
            {
                "engine": engine,
                "shared": shared,
                "baseline_kib": baseline,
                "after_load_kib": after_load,
                "peak_load_kib": peak_load,
                "peak_reset": reset,
                "before_create_kib": before_create,
                "peak_create_kib": peak_create,
                "after_create_kib": after_create,
                "model_bytes": model_bytes,
                "unshared_bytes": unshared_bytes,
                "copied_bytes": copied_bytes,
                "shared_bytes": shared_bytes,
                "load_s": load_s,
                "create_s": create_s,
                "ref_frozen": ok_frozen,
                "peak_total_kib": common.rss_peak_kib() if not reset else max(peak_load, peak_create or 0),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
