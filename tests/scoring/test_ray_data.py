"""Ray Data: ``vhctl score --engine ray`` on a local cluster equals single-process ``vhctl score``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from vhctl.cli.app import app  # noqa: E402
from vhctl.scoring.options import ScoreOptions  # noqa: E402
from vhctl.scoring.ray_data import RaySettings, score_with_ray  # noqa: E402
from vhctl.scoring.tables import TableInput  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def cluster():
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init(num_cpus=2): {time.perf_counter() - started:.1f}s")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("ray") / "ck"
    wrapped = runner.invoke(
        app, ["wrap", "vhctl:tiny", "--out", str(ckpt), "--init", "normal", "--seed", "0"]
    )
    assert wrapped.exit_code == 0, wrapped.output
    return ckpt


def pairs_table(folder: Path) -> tuple[Path, int]:
    rows = [{"id": i, "prompt": f"Q{i % 5}: say", "chosen": " yes" * (1 + i % 3), "rejected": " no" * (1 + i % 4),
             "subset": "ab"[i % 2]} for i in range(40)]  # fmt: skip
    source = folder / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=6)
    return source, len(rows)


def single_process(ckpt: Path, source: Path, tmp_path: Path) -> tuple[Any, dict]:
    out, summary = tmp_path / "single.parquet", tmp_path / "single.json"
    args = [
        "score",
        str(ckpt),
        "--input",
        str(source),
        "--output",
        str(out),
        "-b",
        "2",
        "--summary",
        str(summary),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return pq.read_table(out), json.loads(summary.read_text())


def assert_same(a: Any, b: Any, rows: int) -> None:
    assert a.column_names == b.column_names and a.num_rows == b.num_rows == rows
    assert b.column("id").to_pylist() == list(range(rows))  # input order, across actors and blocks
    for name in ("chosen_value", "rejected_value", "margin"):
        diff = max(
            abs(x - y) for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist(), strict=True)
        )
        assert diff <= 1e-5, (name, diff)


def test_cli_engine_ray_equals_single_process(cluster, ckpt: Path, tmp_path: Path) -> None:
    source, rows = pairs_table(tmp_path)
    expected, expected_summary = single_process(ckpt, source, tmp_path)
    out, summary = tmp_path / "ray.parquet", tmp_path / "ray.json"
    result = runner.invoke(app, ["score", str(ckpt), "--input", str(source), "--output", str(out), "-b", "2",
                                 "--summary", str(summary), "--engine", "ray"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_same(expected, pq.read_table(out), rows)
    found = json.loads(summary.read_text())
    assert (found["correct"], found["pairs"], found["subsets"]) == (
        expected_summary["correct"], expected_summary["pairs"], expected_summary["subsets"]
    )  # fmt: skip


def test_two_actors_through_the_library(cluster, ckpt: Path, tmp_path: Path) -> None:
    source, rows = pairs_table(tmp_path)
    expected, _ = single_process(ckpt, source, tmp_path)
    options = ScoreOptions(ckpt=str(ckpt), batch_size=2, device="cpu")
    out = tmp_path / "ray.parquet"
    done = score_with_ray(
        options, TableInput(path=str(source)), str(out), RaySettings(actors=2, cpus_per_actor=0.5, blocks=5)
    )
    assert done.rows == rows and done.summary is not None and done.summary.total.pairs == rows
    assert_same(expected, pq.read_table(out), rows)
