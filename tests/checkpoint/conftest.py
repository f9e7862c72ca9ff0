"""Fixtures of the checkpoint tests: a clean hand-built GPT-2 checkpoint, made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.checkpoints import save_gpt2, write_head, write_manifest


@pytest.fixture(scope="session")
def _gpt2_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_gpt2(tmp_path_factory.mktemp("gpt2") / "ckpt")
    write_head(folder)
    write_manifest(folder)
    return folder


@pytest.fixture
def ckpt(tmp_path: Path, _gpt2_template: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(_gpt2_template, dst)
    return dst
