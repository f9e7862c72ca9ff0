"""``--deep``: every float tensor of every safetensors file is read in chunks and checked for NaN/Inf."""

from __future__ import annotations

from vhctl.checkpoint.tensors import SafetensorsHeader, iter_tensor_bytes
from vhctl.checkpoint.validate.state import CheckState
from vhctl.constants import ADAPTER_SAFE_NAME, ADAPTERS_DIR
from vhctl.errors import CheckpointError

__all__ = ["FINITE_CHUNK", "check_finite"]

# Bytes read at a time: memory stays flat whatever the tensor size.
FINITE_CHUNK = 16 * 1024 * 1024


def check_finite(state: CheckState) -> None:
    """Report each file whose tensors hold NaN or Inf (one problem per tensor, summarised past 5)."""
    for rel, header in sorted(state.headers.items()):
        if header is None:
            continue
        if rel == state.head_rel:
            code = "nonfinite-head"
        elif rel.startswith(f"{ADAPTERS_DIR}/") or rel == ADAPTER_SAFE_NAME:
            code = "nonfinite-adapter"
        else:
            code = "nonfinite-base"
        state.add_many(code, rel, _nonfinite_tensors(state, rel, header), "tensors hold NaN or Inf")


def _nonfinite_tensors(state: CheckState, rel: str, header: SafetensorsHeader) -> list[str]:
    """One line per tensor of the file holding NaN or Inf; an unreadable tensor is reported and ends the file."""
    import torch

    found: list[str] = []
    for info in header.tensors.values():
        torch_dtype = getattr(torch, info.dtype_name, None)
        if not info.is_float or torch_dtype is None or info.dtype in ("F8_E8M0",):
            continue
        nan = inf = 0
        try:
            for chunk in iter_tensor_bytes(header.path, info, chunk=FINITE_CHUNK):
                values = torch.frombuffer(bytearray(chunk), dtype=torch_dtype)
                if values.dtype.itemsize == 1:
                    values = values.float()
                nan += int(torch.isnan(values).sum())
                inf += int(torch.isinf(values).sum())
        except (OSError, CheckpointError) as exc:
            state.add("file-unreadable", rel, f"cannot read tensor {info.name!r}: {exc}")
            break
        if nan or inf:
            found.append(f"tensor {info.name!r} holds {nan} NaN and {inf} Inf value(s)")
    return found
