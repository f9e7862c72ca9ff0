"""Fixtures of the scoring tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with dynamo + AOTAutograd: the real trace, graphs and guards, no C++ build."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="aot_eager", **kw))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
