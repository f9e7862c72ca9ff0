"""``vhctl info --json`` stays byte for byte what it was when ``inspect_checkpoint`` returned a dict.

``tests/checkpoint/data/info_json.json`` holds the command's output for each kind of folder info
describes, written by the dict-returning implementation (vhctl c4ebf38) with
``VHCTL_WRITE_INFO_GOLDEN=1``. What varies between machines is normalised the same way on both
sides: the temporary folder becomes ``TMP``, this vhctl's version ``VERSION``, and every file size (checked first against the file
on disk, and ``total_size`` against their sum) becomes ``SIZE``, since the size of a ``config.json``
follows the transformers version that wrote it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import (
    HIDDEN,
    attach_adapter,
    make_adapter,
    make_reference,
    save_gpt2,
    write_head,
    write_manifest,
)
from safetensors.torch import load_file, save_file

from vhctl._version import __version__
from vhctl.constants import SAFE_WEIGHTS_NAME, V_HEAD_BIAS, V_HEAD_WEIGHT

GOLDEN = Path(__file__).parent / "data" / "info_json.json"


def _policy(root: Path) -> Path:
    folder = save_gpt2(root / "policy")
    write_head(folder)
    write_manifest(folder)
    return folder


def _with_adapter(root: Path) -> Path:
    folder = _policy(root)
    attach_adapter(folder, make_adapter(root / "adapter"))
    return folder


def _policy_with_reference(root: Path) -> Path:
    folder = _policy(root)
    make_reference(folder, shared_layers=1)
    return folder


def _reference(root: Path) -> Path:
    return make_reference(_policy(root), shared_layers=1)


def _transformers(root: Path) -> Path:
    return save_gpt2(root / "plain")


def _trl(root: Path) -> Path:
    folder = save_gpt2(root / "trl")
    tensors = load_file(str(folder / SAFE_WEIGHTS_NAME))
    tensors[V_HEAD_WEIGHT] = torch.zeros(1, HIDDEN)
    tensors[V_HEAD_BIAS] = torch.zeros(1)
    save_file(tensors, str(folder / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def _trl_head_file(root: Path) -> Path:
    folder = save_gpt2(root / "trl-head")
    write_head(folder)
    return folder


def _peft_adapter(root: Path) -> Path:
    return make_adapter(root / "adapter")


def _peft_policy(root: Path) -> Path:
    from helpers.tiny_models import make_trl_checkpoint

    from vhctl.ops.wrap import wrap_model

    make_trl_checkpoint("gpt2", root / "trl-peft", "peft")
    return wrap_model(root / "trl-peft", root / "peft-policy", allow_pickle=True).out


def _unreadable_header(root: Path) -> Path:
    folder = _policy(root)
    (folder / SAFE_WEIGHTS_NAME).write_bytes(b"\xff" * 64)
    return folder


CASES: dict[str, Callable[[Path], Path]] = {
    "policy": _policy,
    "policy-with-adapter": _with_adapter,
    "policy-with-reference": _policy_with_reference,
    "reference": _reference,
    "transformers": _transformers,
    "trl": _trl,
    "trl-head-file": _trl_head_file,
    "peft-adapter": _peft_adapter,
    "peft-policy": _peft_policy,
    "unreadable-header": _unreadable_header,
}


def _info_json(folder: Path, tmp: Path) -> str:
    """``vhctl info --json`` of ``folder``, normalised (see the module docstring)."""
    run = subprocess.run(
        [sys.executable, "-m", "vhctl", "info", str(folder), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert run.stdout == json.dumps(data, indent=2, sort_keys=True) + "\n"  # the document's own form
    root = Path(data["path"])
    for entry in data["files"]:
        assert entry["size"] == (root / entry["path"]).stat().st_size, entry
    assert data["total_size"] == sum(entry["size"] for entry in data["files"])
    text = run.stdout.replace(str(tmp.resolve()), "TMP").replace(str(tmp), "TMP")
    text = re.sub(r'("size": )\d+', r"\1SIZE", text)
    text = text.replace(f'"vhctl_version": "{__version__}"', '"vhctl_version": "VERSION"')
    return re.sub(r'("total_size": )\d+', r"\1SIZE", text)


@pytest.mark.parametrize("case", sorted(CASES))
def test_info_json_is_what_it_was(case: str, tmp_path: Path) -> None:
    folder = CASES[case](tmp_path)
    got = _info_json(folder, tmp_path)
    if os.environ.get("VHCTL_WRITE_INFO_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden[case] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text(encoding="utf-8"))[case]


def test_the_normalisation_keeps_what_matters(tmp_path: Path) -> None:
    """Only the folder and the sizes are replaced: a value changed elsewhere still fails."""
    folder = _policy(tmp_path)
    got = _info_json(folder, tmp_path)
    assert '"layout": "vhctl"' in got and '"size": SIZE' in got and str(tmp_path) not in got
    manifest = json.loads((folder / "vhctl.json").read_text())
    manifest["vhctl_version"] = "0.0.1"
    (folder / "vhctl.json").write_text(json.dumps(manifest))
    assert _info_json(folder, tmp_path) != json.loads(GOLDEN.read_text(encoding="utf-8"))["policy"]
