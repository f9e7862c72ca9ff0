"""``vhctl info``: what a checkpoint holds (headers only, nothing loaded)."""

from __future__ import annotations

import json
from typing import Any

from vhctl.cli._errors import handle_errors
from vhctl.cli._options import CkptArg, JsonOpt
from vhctl.cli._output import emit_json, emit_pairs, emit_table


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        if not value:
            out.append((prefix, "-"))
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list):
        text = ", ".join(json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v) for v in value)
        out.append((prefix, text or "-"))
    else:
        out.append((prefix, "-" if value is None else value))


@handle_errors
def info(ckpt: CkptArg, json_: JsonOpt = False) -> None:
    """Show architecture, parameter counts, dtypes, head, adapters, references and files of CKPT."""
    from vhctl.checkpoint.inspect import inspect_checkpoint

    data = inspect_checkpoint(ckpt)
    if json_:
        emit_json(data)
        return
    files = data.pop("files", None) or []
    pairs: list[tuple[str, Any]] = []
    _flatten("", data, pairs)
    emit_pairs(f"checkpoint {ckpt}", pairs)
    if files:
        emit_table("files", ("path", "size"), ((f.get("path"), f.get("size")) for f in files))
