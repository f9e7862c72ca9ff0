"""Tables as scoring input and output: columns, forms, bad input, order, atomic Parquet output."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

from vhctl.errors import InputError, UsageError  # noqa: E402
from vhctl.io.records import iter_records  # noqa: E402
from vhctl.io.table_out import ParquetOutput, result_schema  # noqa: E402
from vhctl.io.tables import (  # noqa: E402
    batch_records,
    open_dataset,
    open_table,
    parse_columns,
    resolve_columns,
)

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def records_of(path: Path, wanted: dict[str, str] | None = None, rows: int = 4, **kwargs):
    source = open_table(str(path))
    columns = resolve_columns(source.schema, wanted or {}, str(path))
    out, first = [], 1
    for batch in source.iter_batches(rows):
        out += batch_records(batch, columns, first, **kwargs)
        first += batch.num_rows
    return columns, out


def test_forms_are_found_by_column_name(tmp_path: Path) -> None:
    cases = {
        "text": ({"text": ["a", "b"]}, "text"),
        "prompt": ({"prompt": ["p", "q"], "response": ["r", "s"], "other": [1, 2]}, "prompt"),
        "messages": ({"messages": [CHAT, CHAT]}, "messages"),
        "pairs": ({"prompt": ["p", "q"], "chosen": ["a", "b"], "rejected": ["c", "d"], "messages": [CHAT, CHAT]},
                  "pair"),
    }  # fmt: skip
    for name, (data, kind) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table(data), path)
        _, records = records_of(path)
        assert [r.kind for r in records] == [kind, kind], name
    _, records = records_of(tmp_path / "prompt.parquet")
    assert (records[1].prompt, records[1].response, records[1].line) == ("q", "s", 2)
    _, pairs = records_of(tmp_path / "pairs.parquet")
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("p", "a", "c")


def test_column_option_picks_other_columns_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x", "y"], "uid": ["u1", None], "text": ["no", "no"]}), path)
    columns, records = records_of(path, parse_columns(["text=body", "id=uid"]))
    assert columns.fields == {"text": "body", "id": "uid"}
    assert [(r.text, r.id, r.has_id) for r in records] == [("x", "u1", True), ("y", None, True)]


@pytest.mark.parametrize(
    ("data", "wanted", "message"),
    [
        ({"a": ["x"]}, {}, "no column to score"),
        ({"text": ["x"], "prompt": ["y"]}, {}, "which one to score"),
        ({"text": [1]}, {}, "column 'text' (text) holds int64, not strings"),
        ({"body": ["x"]}, {"text": "nope"}, "no column 'nope'"),
        ({"chosen": ["x"], "b": ["y"]}, {"chosen": "chosen"}, "needs both 'chosen' and 'rejected'"),
        ({"messages": [["x"]]}, {}, "not message lists"),
    ],
)
def test_bad_columns_name_the_column(tmp_path: Path, data, wanted, message) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(data), path)
    with pytest.raises(UsageError, match=re.escape(message)):
        records_of(path, wanted)


def test_bad_column_options() -> None:
    for spec in (["text"], ["colour=x"], ["text="]):
        with pytest.raises(UsageError, match="invalid --column"):
            parse_columns(spec)
    with pytest.raises(UsageError, match="twice"):
        parse_columns(["text=a", "text=b"])


def test_a_null_row_names_its_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["a", "b", None, "d"]}), path, row_group_size=2)
    with pytest.raises(InputError, match=r"^row 3: column 'body' \(text\) must be a string, not null"):
        records_of(path, {"text": "body"}, rows=2)
    _, records = records_of(path, {"text": "body"}, rows=2, skip_bad=True)
    assert [r.kind for r in records] == ["text", "text", "error", "text"]
    assert records[2].line == 3 and "must be a string" in (records[2].error or "")


def test_pair_with_null_prompt_is_a_pair_without_prompt(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt": ["p", None], "chosen": ["a", "b"], "rejected": ["c", "d"]}), path)
    _, records = records_of(path)
    assert [r.prompt for r in records] == ["p", None] and records[1].kind == "pair"


def test_corrupt_and_truncated_files_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(InputError, match=r"bad.parquet is not a readable parquet file"):
        open_table(str(bad))
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" * 50 for i in range(2000)]}), good, row_group_size=500)
    data = good.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2] + data[-(8 + 4096) :])  # footer kept, a row group's bytes gone
    with pytest.raises(InputError, match=r"cut.parquet"):
        records_of(cut, rows=500)
    with pytest.raises(UsageError, match="not found"):
        open_table(str(tmp_path / "missing.parquet"))


def test_arrow_file_stream_jsonl_and_folder_read_the_same_rows(tmp_path: Path) -> None:
    table = pa.table({"id": list(range(10)), "text": [f"t{i}" for i in range(10)]})
    with pa.ipc.new_file(tmp_path / "f.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=3)
    with pa.ipc.new_stream(tmp_path / "s.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=4)
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(table.slice(0, 5), folder / "part-0.parquet")
    pq.write_table(table.slice(5), folder / "part-1.parquet")
    datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"))
    for name in ("f.arrow", "s.arrow", "l.jsonl", "parts", "saved"):
        _, records = records_of(tmp_path / name, rows=3)
        assert [(r.id, r.text, r.line) for r in records] == [(i, f"t{i}", i + 1) for i in range(10)], name


def test_dataset_folder_with_splits(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a", "b"]}), folder / "data" / "train-00000.parquet")
    pq.write_table(pa.table({"text": ["c"]}), folder / "data" / "test-00000.parquet")
    source = open_dataset(str(folder), split="test")
    assert [b.column("text").to_pylist() for b in source.iter_batches(10)] == [["c"]]
    assert source.num_rows == 1
    with pytest.raises(InputError, match="cannot load dataset .*nope"):
        open_dataset(str(folder), split="nope")


def test_parquet_output_keeps_input_columns_and_order(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("text", pa.string()), ("value", pa.string())])
    added = result_schema(pairs=False, reward=True, per_token=True, errors=True)
    dest = tmp_path / "out.parquet"
    with ParquetOutput(dest, schema, added) as out:
        for start in range(0, 20000, 1000):
            ids = list(range(start, start + 1000))
            batch = pa.record_batch([ids, [str(i) for i in ids], ["old"] * 1000], schema=schema)
            results = [{"value": i / 2, "reward": -i, "values": [i, i / 2]} for i in ids]
            results[0] = {"line": start + 1, "error": "bad"}
            out.write(batch, results)
        assert not dest.exists()  # nothing in place before commit
        out.commit()
    table = pq.read_table(dest)
    assert table.column_names == ["id", "text", "value", "reward", "values", "truncated", "error"]
    assert table.schema.field("value").type == pa.float64()  # the input's 'value' is replaced
    assert table.column("id").to_pylist() == list(range(20000))
    assert table.column("value").to_pylist()[1:3] == [0.5, 1.0] and table.column("value")[0].as_py() is None
    assert table.column("truncated").to_pylist()[:2] == [None, False]
    meta = pq.ParquetFile(dest).metadata  # a row group once 8192 rows are waiting, then the rest
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [9000, 9000, 2000]


def test_parquet_output_is_removed_on_failure_and_keeps_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.parquet"
    dest.write_bytes(b"old")
    schema = pa.schema([("text", pa.string())])
    with pytest.raises(RuntimeError), ParquetOutput(dest, schema, result_schema(pairs=True, reward=False,
                                                                                per_token=False, errors=False)):  # fmt: skip
        raise RuntimeError("stop")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_jsonl_pairs_are_read_only_when_asked() -> None:
    line = json.dumps({"id": 1, "prompt": CHAT[:1], "chosen": "a", "rejected": CHAT[1:], "subset": "s"})
    (pair,) = list(iter_records(io.BytesIO(line.encode()), pairs=True))
    assert pair.kind == "pair" and pair.messages == CHAT[:1] and pair.prompt is None and pair.subset == "s"
    assert pair.chosen == "a" and pair.rejected == CHAT[1:]
    with pytest.raises(InputError, match="no known field"):  # serve and the old readers: not a pair
        list(iter_records(io.BytesIO(b'{"chosen": "a", "rejected": "b"}')))
    with pytest.raises(InputError, match="line 1: has chosen but no 'rejected'"):
        list(iter_records(io.BytesIO(b'{"chosen": "a"}'), pairs=True))
    with pytest.raises(InputError, match="field 'rejected' must be a string or an array of messages"):
        list(iter_records(io.BytesIO(b'{"chosen": "a", "rejected": 3}'), pairs=True))
    with pytest.raises(InputError, match="field 'chosen': messages\\[0\\] has no 'content'"):
        list(iter_records(io.BytesIO(b'{"chosen": [{"role": "user"}], "rejected": "b"}'), pairs=True))
