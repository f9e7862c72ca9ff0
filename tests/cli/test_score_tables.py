"""``vhctl score`` on tables and preference pairs: Parquet in and out, datasets, pair accuracy.

Expected numbers always come from ``vhctl score`` itself on JSON Lines (the answers scored one by
one), and the accuracy from those values, computed here by hand.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from vhctl.cli.app import app  # noqa: E402

runner = CliRunner()
WORDS = "the a cat dog sat ran on under mat rug quickly slowly red blue big small".split()
TOL = 1e-5  # float32 noise between batchings: measured about 2e-7


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def jsonl_values(ckpt: Path, objects: list[dict], *args: str) -> list[float]:
    result = run("score", str(ckpt), "-b", "2", *args, input="".join(json.dumps(o) + "\n" for o in objects))
    assert result.exit_code == 0, result.output
    return [json.loads(line)["value"] for line in result.stdout.splitlines()]


def words(rng: random.Random, n: int) -> str:
    return " " + " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables") / "ck"
    result = run("wrap", "vhctl:tiny", "--out", str(out), "--init", "normal", "--seed", "0")
    assert result.exit_code == 0, result.output
    return out


def rewardbench_rows(n: int = 30) -> list[dict]:
    rng = random.Random(0)
    subsets = ["alpacaeval-easy", "math-prm", "refusals-dangerous"]
    return [
        {"prompt": f"Question {i % 7}:" + words(rng, 3), "chosen": words(rng, rng.randint(1, 6)),
         "rejected": words(rng, rng.randint(1, 6)), "chosen_model": "m1", "rejected_model": "m2",
         "subset": subsets[i % 3], "id": 1000 + i}
        for i in range(n)
    ]  # fmt: skip


def hand_accuracy(rows: list[dict], chosen: list[float], rejected: list[float]) -> dict[str, tuple[int, int]]:
    """{subset: (correct, pairs)} and '' for all of them, from the answers' values."""
    found: dict[str, list[int]] = {"": [0, 0]}
    for row, c, r in zip(rows, chosen, rejected, strict=True):
        for key in ("", row.get("subset")):
            if key is None:
                continue
            tally = found.setdefault(key, [0, 0])
            tally[0] += c > r
            tally[1] += 1
    return {k: (v[0], v[1]) for k, v in found.items()}


def score_pairs_file(ckpt: Path, tmp_path: Path, rows: list[dict], row_group_size: int):
    """``vhctl score`` of ``rows`` written as Parquet, into Parquet and a JSON summary."""
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=row_group_size)
    out, summary_file = tmp_path / "scored.parquet", tmp_path / "summary.json"
    result = run("score", str(ckpt), "--input", str(source), "--output", str(out), "--summary", str(summary_file),
                 "-b", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    return result, out, summary_file


def test_rewardbench_parquet_accuracy_per_subset(ckpt: Path, tmp_path: Path) -> None:
    rows = rewardbench_rows()
    result, out, summary_file = score_pairs_file(ckpt, tmp_path, rows, row_group_size=4)
    assert "prefix sharing" in result.stderr and "pairs: accuracy" in result.stderr
    table = pq.read_table(out)
    assert table.column_names[: len(rows[0])] == list(rows[0])  # the input's columns first, as they were
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    chosen = jsonl_values(ckpt, [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows])
    rejected = jsonl_values(ckpt, [{"prompt": r["prompt"], "response": r["rejected"]} for r in rows])
    got_c, got_r = table.column("chosen_value").to_pylist(), table.column("rejected_value").to_pylist()
    assert max(abs(a - b) for a, b in zip(got_c + got_r, chosen + rejected, strict=True)) <= TOL
    margins = table.column("margin").to_pylist()
    assert all(abs(m - (c - r)) <= 1e-9 for m, c, r in zip(margins, got_c, got_r, strict=True))
    expected = hand_accuracy(rows, chosen, rejected)
    assert 0 < expected[""][0] < expected[""][1]  # the case worth testing: neither all right nor all wrong
    summary = json.loads(summary_file.read_text())
    assert (summary["correct"], summary["pairs"], summary["records"]) == (*expected[""], 2 * len(rows))
    assert summary["accuracy"] == pytest.approx(expected[""][0] / expected[""][1])
    low, high = summary["ci95"]
    assert low < summary["accuracy"] < high
    for name, tally in summary["subsets"].items():
        assert (tally["correct"], tally["pairs"]) == expected[name], name
    assert sorted(summary["subsets"]) == sorted({r["subset"] for r in rows})
    for name in summary["subsets"]:
        assert f"  {name}: accuracy" in result.stderr


def ultrafeedback_rows(n: int = 12) -> list[dict]:
    rng = random.Random(1)
    rows = []
    for i in range(n):
        prompt = f"Tell me {i % 4}" + words(rng, 2)
        user = {"role": "user", "content": prompt}
        answers = [
            [user, {"role": "assistant", "content": words(rng, rng.randint(1, 5)).strip()}] for _ in "cr"
        ]
        rows.append({"prompt": prompt, "prompt_id": f"p{i}", "chosen": answers[0], "rejected": answers[1],
                     "messages": answers[0], "score_chosen": 8.0, "score_rejected": 4.0})  # fmt: skip
    return rows


def test_ultrafeedback_parquet_messages_share_the_prompt(ckpt: Path, tmp_path: Path) -> None:
    rows = ultrafeedback_rows()
    result, out, summary_file = score_pairs_file(ckpt, tmp_path, rows, row_group_size=5)
    # one prompt forward saved per pair at least: the chat prompt is a token prefix of both answers
    saved = int(result.stderr.split(" prompt forward(s) saved")[0].rsplit(", ", 1)[1])
    assert saved >= len(rows)
    table = pq.read_table(out)
    chosen = jsonl_values(ckpt, [{"messages": r["chosen"]} for r in rows])
    rejected = jsonl_values(ckpt, [{"messages": r["rejected"]} for r in rows])
    assert (
        max(abs(a - b) for a, b in zip(table.column("chosen_value").to_pylist(), chosen, strict=True)) <= TOL
    )
    assert (
        max(abs(a - b) for a, b in zip(table.column("rejected_value").to_pylist(), rejected, strict=True))
        <= TOL
    )
    summary = json.loads(summary_file.read_text())
    assert (summary["correct"], summary["pairs"]) == hand_accuracy(rows, chosen, rejected)[""]
    assert summary["subsets"] == {}


def test_pairs_in_json_lines_without_a_flag(ckpt: Path, tmp_path: Path) -> None:
    rows = rewardbench_rows(10)
    text = "".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"text": "a single line too"}) + "\n"
    summary_file = tmp_path / "summary.json"
    result = run("score", str(ckpt), "-b", "2", "--summary", str(summary_file), input=text)
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 11 and set(out[-1]) == {"value"}
    assert [o["id"] for o in out[:10]] == [r["id"] for r in rows] and out[0]["subset"] == rows[0]["subset"]
    assert set(out[0]) == {"id", "subset", "chosen_value", "rejected_value", "margin"}
    chosen = jsonl_values(ckpt, [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows])
    assert max(abs(o["chosen_value"] - c) for o, c in zip(out, chosen, strict=False)) <= TOL
    summary = json.loads(summary_file.read_text())
    assert summary["pairs"] == 10 and "pairs: accuracy" in result.stderr
    plain = run("score", str(ckpt), "--summary", str(summary_file), input="just text\n")
    assert plain.exit_code == 0 and json.loads(summary_file.read_text())["pairs"] == 0


def test_parquet_round_trip_keeps_order_across_row_groups(ckpt: Path, tmp_path: Path) -> None:
    rng = random.Random(2)
    rows = [{"uid": f"r{i}", "body": words(rng, rng.randint(1, 30)), "score": i * 0.5} for i in range(150)]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=7)
    out = tmp_path / "out.parquet"
    args = ("--column", "text=body", "--column", "id=uid", "--per-token", "--max-length", "20", "-b", "2")
    result = run("score", str(ckpt), "--input", str(source), "--output", str(out), *args)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["uid", "body", "score", "value", "values", "truncated"]
    assert table.select(["uid", "body", "score"]).to_pylist() == rows  # every input column, in order
    expected = jsonl_values(ckpt, [{"text": r["body"]} for r in rows], "--max-length", "20")
    values = table.column("value").to_pylist()
    assert max(abs(a - b) for a, b in zip(values, expected, strict=True)) <= TOL
    truncated = table.column("truncated").to_pylist()
    assert any(truncated) and not all(truncated)
    assert all(len(v) == 20 for v, t in zip(table.column("values").to_pylist(), truncated, strict=True) if t)
    as_jsonl = run("score", str(ckpt), "--input", str(source), *args)  # a table to stdout: JSON Lines
    assert as_jsonl.exit_code == 0, as_jsonl.output
    lines = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    assert [line["id"] for line in lines] == [r["uid"] for r in rows]


def test_jsonl_file_to_parquet_and_dataset_folder(ckpt: Path, tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": "Q:", "response": f" answer {i}"} for i in range(9)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.parquet"
    result = run("score", str(ckpt), "--input", str(source), "--output", str(out))
    assert result.exit_code == 0, result.output
    expected = jsonl_values(ckpt, rows)
    assert (
        max(abs(a - b) for a, b in zip(pq.read_table(out).column("value").to_pylist(), expected, strict=True))
        <= TOL
    )
    folder = tmp_path / "my-dataset" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "train-00000-of-00001.parquet")
    result = run("score", str(ckpt), "--dataset", str(folder.parent), "--split", "test", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column("value").to_pylist() == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(
    ("make", "args", "code", "message"),
    [
        (lambda p: pq.write_table(pa.table({"txt": ["a"]}), p), (), 2, "has no column to score (its columns: 'txt')"),
        (lambda p: pq.write_table(pa.table({"text": [1, 2]}), p), (), 2, "column 'text' (text) holds int64"),
        (lambda p: p.write_bytes(b"PAR1 garbage"), (), 1, "is not a readable parquet file"),
        (lambda p: pq.write_table(pa.table({"text": ["a"] * 99 + [None] + ["b"] * 50}), p, row_group_size=10),
         ("-b", "2"), 1, "row 100: column 'text' must be a string, not null"),
        (lambda p: pq.write_table(pa.table({"text": ["a"]}), p), ("--column", "prompt=nope"), 2, "no column 'nope'"),
        (lambda p: pq.write_table(pa.table({"text": ["a"]}), p), ("--split", "x"), 2, "go with --dataset"),
        (lambda p: pq.write_table(pa.table({"text": ["a"]}), p), ("--engine", "spark"), 2, "invalid --engine"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_no_output(ckpt: Path, tmp_path: Path, make, args, code, message) -> None:
    source = tmp_path / "in.parquet"
    make(source)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"an older output")
    result = run("score", str(ckpt), "--input", str(source), "--output", str(out), *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert out.read_bytes() == b"an older output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out.parquet"]


def test_skip_bad_rows_get_an_error_column(ckpt: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"prompt": ["p", "q", "r"], "chosen": ["a", None, "c"], "rejected": ["b", "b", "d"]}), source
    )
    out = tmp_path / "out.parquet"
    result = run("score", str(ckpt), "--input", str(source), "--output", str(out), "--skip-bad")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    errors = table.column("error").to_pylist()
    assert errors[0] is None and errors[2] is None and "column 'chosen'" in errors[1]
    assert table.column("chosen_value")[1].as_py() is None and table.column("margin")[0].as_py() is not None
    assert "2/2 pair(s)" in result.stderr or "/2 pair(s)" in result.stderr


def test_output_must_be_parquet_and_tables_are_not_for_torchrun(
    ckpt: Path, tmp_path: Path, monkeypatch
) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a"]}), source)
    result = run("score", str(ckpt), "--input", str(source), "--output", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 2 and "writes Parquet" in result.stderr
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500", "LOCAL_WORLD_SIZE": "2"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    result = run("score", str(ckpt), "--input", str(source))
    assert result.exit_code == 2 and "not by torchrun ranks" in result.stderr
    assert list(tmp_path.iterdir()) == [source]
