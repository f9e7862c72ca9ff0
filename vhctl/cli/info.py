"""``vhctl info``: what a checkpoint holds (headers only, nothing loaded)."""

from __future__ import annotations

from typing import Any

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import CkptArg, JsonOpt
from vhctl.cli._output import Reporter, emit_pairs, emit_table

__all__ = ["info"]


def _text(key: str, value: Any) -> Any:
    """One value as a person reads it: yes/no, ``-`` for nothing, shapes as ``1 x 64``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if not value:
            return "-"
        return (
            " x ".join(map(str, value))
            if key.endswith("shape")
            else ", ".join(str(_text("", v)) for v in value)
        )
    return value


def _label(item: dict[str, Any], index: int) -> tuple[str, dict[str, Any]]:
    """A list entry's row name (its path or name) and the fields left to show."""
    for key in ("path", "name"):
        if isinstance(item.get(key), str):
            return item[key], {k: v for k, v in item.items() if k != key}
    return str(index), item


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    """Nested fields as ``a.b.c`` rows; a list of objects gets one row group per entry, named by its
    path (``references.ref  found``)."""
    if isinstance(value, dict):
        if not value:
            out.append((prefix, "-"))
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            label, rest = _label(item, index)
            if set(rest) == {"found"}:
                out.append((f"{prefix}.{label}", "found" if rest["found"] else "missing"))
            else:
                _flatten(f"{prefix}.{label}", rest, out)
    else:
        out.append((prefix, _text(prefix, value)))


@handle_errors
def info(ckpt: CkptArg, json_: JsonOpt = False) -> None:
    """Show architecture, parameter counts, dtypes, head, adapters, references and files of CKPT."""
    from vhctl.checkpoint.inspect import inspect_checkpoint

    result = inspect_checkpoint(ckpt)

    def show() -> None:
        data = result.to_dict()
        files = data.pop("files", None) or []
        pairs: list[tuple[str, Any]] = []
        _flatten("", data, pairs)
        emit_pairs(f"checkpoint {ckpt}", pairs)
        if files:
            emit_table("files", ("path", "size"), ((f.get("path"), f.get("size")) for f in files))

    Reporter(json_output=json_).done(result, None, human=show)
