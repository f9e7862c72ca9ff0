"""``vhctl score --dataset NAME`` through the real ``datasets`` hub client, against the loopback hub,
then again offline from the datasets cache. Runs ``vhctl`` in child processes: ``datasets`` reads
its endpoint and cache settings when it is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.hub_server import VALID_TOKEN, LoopbackHub
from typer.testing import CliRunner

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets")

from vhctl.cli.app import app  # noqa: E402


def vhctl(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vhctl", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_hub_dataset_then_offline_from_the_cache(hub: LoopbackHub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    ckpt = tmp_path / "ck"
    wrapped = CliRunner().invoke(
        app, ["wrap", "vhctl:tiny", "--out", str(ckpt), "--init", "normal", "--seed", "0"]
    )
    assert wrapped.exit_code == 0, wrapped.output
    rows = [
        {"prompt": f"Q{i}:", "chosen": " good" * (i % 3 + 1), "rejected": " bad", "subset": "s"}
        for i in range(6)
    ]
    data = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    api = HfApi(endpoint=hub.url, token=VALID_TOKEN)
    api.create_repo("tester/pairs", repo_type="dataset")
    api.upload_file(path_or_fileobj=str(data), path_in_repo="data/test-00000-of-00001.parquet",
                    repo_id="tester/pairs", repo_type="dataset")  # fmt: skip
    api.upload_file(path_or_fileobj=str(data), path_in_repo="data/train-00000-of-00001.parquet",
                    repo_id="tester/pairs", repo_type="dataset")  # fmt: skip
    env = dict(
        os.environ, HF_TOKEN=VALID_TOKEN, HF_HUB_OFFLINE="0", HF_DATASETS_CACHE=str(tmp_path / "datasets")
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    out = tmp_path / "out.parquet"
    online = vhctl(env, "score", str(ckpt), "--dataset", "tester/pairs", "--split", "test", "--output", str(out),
                   "--summary", str(tmp_path / "s.json"))  # fmt: skip
    assert online.returncode == 0, online.stderr
    assert any(r.path.startswith("/api/datasets/tester/pairs") for r in hub.requests)
    table = pq.read_table(out)
    assert table.select(list(rows[0])).to_pylist() == rows and "margin" in table.column_names
    lines = "".join(json.dumps({"prompt": r["prompt"], "response": r["chosen"]}) + "\n" for r in rows)
    expected = CliRunner().invoke(app, ["score", str(ckpt)], input=lines)
    assert expected.exit_code == 0, expected.output
    chosen = [json.loads(line)["value"] for line in expected.stdout.splitlines()]
    assert table.column("chosen_value").to_pylist() == pytest.approx(chosen, abs=1e-5)
    assert json.loads((tmp_path / "s.json").read_text())["pairs"] == len(rows)
    hub.stop()  # nothing to reach now: the cached dataset must do
    offline = vhctl(
        dict(env, HF_HUB_OFFLINE="1"), "score", str(ckpt), "--dataset", "tester/pairs", "--split", "test"
    )
    assert offline.returncode == 0, offline.stderr
    got = [json.loads(line)["chosen_value"] for line in offline.stdout.splitlines()]
    assert got == pytest.approx(chosen, abs=1e-5)
    missing = CliRunner().invoke(
        app, ["score", str(ckpt), "--dataset", "tester/other"]
    )  # offline, in-process
    assert missing.exit_code == 1 and "Error: cannot load dataset 'tester/other'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
