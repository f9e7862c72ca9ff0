"""Fixtures of the ``vhctl serve`` tests (helpers: ``servekit.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhctl.scoring.pipeline import ScoreOptions
from vhctl.serve.model import LoadedModel, load_model


@pytest.fixture(scope="module")
def loaded(tiny_ckpt: Path) -> LoadedModel:
    """The tiny checkpoint loaded once per module, as the server loads it."""
    return load_model(ScoreOptions(ckpt=str(tiny_ckpt), device="cpu"))
