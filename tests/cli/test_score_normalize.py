"""``vhctl score --normalize``: OpenRLHF's normalised reward from the mean/std a checkpoint carries."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vhctl.checkpoint.manifest import Manifest
from vhctl.cli.app import app

runner = CliRunner()
INPUT = 'one line\n{"id": 2, "prompt": "Q", "response": " A"}\n'


@pytest.fixture
def ckpt(tmp_path):
    out = tmp_path / "ck"
    assert (
        runner.invoke(
            app, ["wrap", "vhctl:tiny", "--out", str(out), "--init", "normal", "--seed", "0"]
        ).exit_code
        == 0
    )
    return out


def test_normalize_applies_mean_and_std(ckpt) -> None:
    plain = runner.invoke(app, ["score", str(ckpt), "--per-token"], input=INPUT)
    assert plain.exit_code == 0, plain.output
    manifest = Manifest.read(ckpt)
    manifest.extra["reward_normalization"] = {"mean": 0.5, "std": 2.0}
    manifest.write(ckpt)
    normed = runner.invoke(app, ["score", str(ckpt), "--per-token", "--normalize"], input=INPUT)
    assert normed.exit_code == 0, normed.output
    for a, b in zip(plain.stdout.splitlines(), normed.stdout.splitlines(), strict=True):
        ra, rb = json.loads(a), json.loads(b)
        assert rb["value"] == pytest.approx((ra["value"] - 0.5) / 2.0, abs=1e-6)
        assert rb["values"] == pytest.approx([(v - 0.5) / 2.0 for v in ra["values"]], abs=1e-6)
        assert ra.get("id") == rb.get("id")


def test_normalize_without_normalisation_is_bad_usage(ckpt) -> None:
    result = runner.invoke(app, ["score", str(ckpt), "--normalize"], input=INPUT)
    assert result.exit_code == 2
    assert "--normalize" in result.stderr and result.stdout == ""
