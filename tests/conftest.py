"""Shared test setup: tests/ on sys.path (for the ``helpers`` package) and an isolated, offline environment."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(1)

pytest_plugins = ["helpers.hub_server"]  # the `hub` and `hf_env` fixtures


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own empty HF cache, no network, no colours, no token.

    huggingface_hub reads these variables once, at import, so its constants are patched too
    when it is already imported (a hub test that needs the network patches them back).
    """
    hf_home = tmp_path_factory.mktemp("hf_home")
    hub_cache = hf_home / "hub"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "HF_HOME", str(hf_home), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache), raising=False)
        monkeypatch.setattr(constants, "HF_XET_CACHE", str(hf_home / "xet"), raising=False)
        monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(hf_home / "assets"), raising=False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"), raising=False)
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory):
    """``vhctl wrap vhctl:tiny`` with a seeded normal head, once per module (tests only read it)."""
    from typer.testing import CliRunner

    from vhctl.cli.app import app

    out = tmp_path_factory.mktemp("tiny") / "ck"
    result = CliRunner().invoke(
        app, ["wrap", "vhctl:tiny", "--out", str(out), "--init", "normal", "--seed", "0"]
    )
    assert result.exit_code == 0, result.output
    return out
