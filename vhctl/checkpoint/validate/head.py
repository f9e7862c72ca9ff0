"""The value head: exactly ``v_head.summary.weight`` (1, hidden) and ``v_head.summary.bias`` (1,),
float, of the manifest's dtype, with the model's hidden size."""

from __future__ import annotations

from vhctl.checkpoint.manifest import ValueHeadInfo
from vhctl.checkpoint.tensors import HEAD_FLOAT_NAMES, TensorInfo
from vhctl.checkpoint.validate.problems import fmt_shape
from vhctl.checkpoint.validate.state import CheckState
from vhctl.constants import MANIFEST_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT

__all__ = ["check_head"]

_FLOATS = ", ".join(sorted(HEAD_FLOAT_NAMES))


def check_head(state: CheckState) -> None:
    """The manifest's head record agrees with the model, and the head file with both."""
    rel = state.head_rel
    vh = state.manifest.value_head if state.manifest is not None else None
    manifest_hidden = _check_record(state, vh)
    if state.is_outside(rel):
        return
    if not (state.root / rel).is_file():
        state.add("head-missing", rel, "the value head file is not there; re-create it with 'vhctl wrap'")
        return
    header = state.headers.get(rel)
    if header is None:
        return
    tensors = header.tensors
    for key in (V_HEAD_WEIGHT, V_HEAD_BIAS):
        if key not in tensors:
            state.add("head-missing", rel, f"has no tensor {key!r}")
    for key in sorted(set(tensors) - {V_HEAD_WEIGHT, V_HEAD_BIAS}):
        state.add(
            "head-shape",
            rel,
            f"holds unexpected tensor {key!r}; a value head has only {V_HEAD_WEIGHT} and {V_HEAD_BIAS}",
        )
    weight, bias = tensors.get(V_HEAD_WEIGHT), tensors.get(V_HEAD_BIAS)
    if weight is not None:
        _check_weight(state, rel, weight, manifest_hidden)
    if bias is not None and bias.shape != (1,):
        state.add("head-shape", rel, f"{V_HEAD_BIAS} has shape {fmt_shape(bias.shape)}, expected (1,)")
    want_dtype = vh.dtype if vh is not None and vh.dtype in HEAD_FLOAT_NAMES else None
    for info in (weight, bias):
        if info is None:
            continue
        if info.dtype_name not in HEAD_FLOAT_NAMES:
            state.add(
                "head-dtype",
                rel,
                f"{info.name} is {info.dtype_name}; a value head must be a float tensor ({_FLOATS})",
            )
        elif want_dtype is not None and info.dtype_name != want_dtype:
            state.add("head-dtype", rel, f"{info.name} is {info.dtype_name}, the manifest says {want_dtype}")


def _check_record(state: CheckState, vh: ValueHeadInfo | None) -> int | None:
    """The manifest's ``value_head`` dtype and hidden size; returns that hidden size (None: unknown)."""
    if vh is not None and isinstance(vh.dtype, str) and vh.dtype not in HEAD_FLOAT_NAMES:
        state.add(
            "head-dtype",
            MANIFEST_NAME,
            f"value_head.dtype is {vh.dtype!r}; a value head must be one of {_FLOATS}",
        )
    manifest_hidden = vh.hidden_size if vh is not None and isinstance(vh.hidden_size, int) else None
    if manifest_hidden is not None and state.hidden is not None and manifest_hidden != state.hidden:
        state.add(
            "head-hidden-size",
            MANIFEST_NAME,
            f"value_head.hidden_size is {manifest_hidden}, the model's hidden size is {state.hidden}",
        )
    return manifest_hidden


def _check_weight(state: CheckState, rel: str, weight: TensorInfo, manifest_hidden: int | None) -> None:
    """``v_head.summary.weight`` is (1, hidden), hidden being the model's (else the manifest's)."""
    hidden = state.hidden
    if len(weight.shape) == 2 and weight.shape[0] == 1:
        head_hidden = weight.shape[1]
        if hidden is not None and head_hidden != hidden:
            state.add(
                "head-hidden-size",
                rel,
                f"{V_HEAD_WEIGHT} is {fmt_shape(weight.shape)}: made for "
                f"hidden size {head_hidden}, the model's is {hidden}",
            )
        elif hidden is None and manifest_hidden is not None and head_hidden != manifest_hidden:
            state.add(
                "head-hidden-size",
                rel,
                f"{V_HEAD_WEIGHT} is {fmt_shape(weight.shape)}, the manifest says hidden size {manifest_hidden}",
            )
    else:
        want = f"(1, {hidden or manifest_hidden or 'hidden'})"
        state.add("head-shape", rel, f"{V_HEAD_WEIGHT} has shape {fmt_shape(weight.shape)}, expected {want}")
