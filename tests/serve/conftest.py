"""Fixtures of the ``vhctl serve`` tests (helpers: ``servekit.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhctl.scoring.session import ScoringSession
from vhctl.serve.server import load_session, server_score_options


@pytest.fixture(scope="module")
def loaded(tiny_ckpt: Path) -> ScoringSession:
    """The tiny checkpoint's scoring session, opened once per module as ``vhctl serve`` opens it."""
    return load_session(server_score_options(str(tiny_ckpt), device="cpu"))
