"""Scoring input from tables: Parquet, Arrow and JSON Lines files, and Hugging Face datasets.

A table is read batch by batch (a Parquet row group at a time, memory-mapped Arrow), so memory
stays bounded however many rows it has, and rows keep their order. Which columns are scored is
said by field (the JSON Lines field names: ``text``, ``prompt`` + ``response``, ``messages``, a
pair's ``chosen`` + ``rejected``, and ``id``, ``subset``), each read from the column of that name
unless ``--column FIELD=NAME`` names another. Each row becomes a
:class:`~vhctl.io.records.Record` checked as a JSON line is; errors name the row and the column.

pyarrow and datasets do the reading (the ``vhctl[data]`` extra); they are imported when a table
is opened, so the rest of vhctl works without them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vhctl.errors import InputError, UsageError, first_line
from vhctl.io.records import Record, record_from_object

__all__ = [
    "FIELDS",
    "TABLE_SUFFIXES",
    "Columns",
    "TableSource",
    "batch_records",
    "is_table_path",
    "need_data_extra",
    "open_dataset",
    "open_table",
    "parse_columns",
    "resolve_columns",
    "row_error",
]

FIELDS = ("text", "prompt", "response", "messages", "chosen", "rejected", "id", "subset")
_CONTENT = ("text", "prompt", "response", "messages", "chosen", "rejected")
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow",
                  ".ipc": "arrow", ".jsonl": "json", ".ndjson": "json", ".json": "json"}  # fmt: skip
_JSON_BLOCK = 16 << 20  # bytes per JSON parse block: a line may be this long


def need_data_extra() -> Any:
    """pyarrow, or the one-line error saying which extra to install."""
    try:
        import pyarrow
    except ImportError as exc:
        raise UsageError(
            "reading and writing tables needs pyarrow and datasets",
            hint="pip install 'vhctl[data]'",
        ) from exc
    return pyarrow


def is_table_path(path: str) -> bool:
    """Whether ``path`` names a Parquet or Arrow file (by its suffix) or a folder of them."""
    if path == "-":
        return False
    suffix = Path(path).suffix.lower()
    return TABLE_SUFFIXES.get(suffix) in ("parquet", "arrow") or Path(path).is_dir()


def parse_columns(specs: list[str] | None) -> dict[str, str]:
    """``--column FIELD=NAME`` options as {field: column name}.

    Raises:
        UsageError: not FIELD=NAME, an unknown field, or a field given twice.
    """
    found: dict[str, str] = {}
    for spec in specs or []:
        field, sep, name = spec.partition("=")
        field = field.strip()
        if not sep or not name or field not in FIELDS:
            raise UsageError(
                f"invalid --column {spec!r}", hint=f"use FIELD=COLUMN, FIELD one of {', '.join(FIELDS)}"
            )
        if field in found:
            raise UsageError(f"--column {field}= is given twice")
        found[field] = name
    return found


@dataclass(frozen=True)
class Columns:
    """The columns a table is scored by: {field: column name}, and whether its rows are pairs."""

    fields: dict[str, str]
    pairs: bool

    def describe(self) -> str:
        return ", ".join(f"{f}={n}" if f != n else f for f, n in self.fields.items())


def _kind(pa: Any, type_: Any) -> str:
    """'string', 'messages' (a list of structs with role and content), 'null' or 'other'."""
    types = pa.types
    if types.is_null(type_):
        return "null"
    if types.is_string(type_) or types.is_large_string(type_) or types.is_string_view(type_):
        return "string"
    if types.is_list(type_) or types.is_large_list(type_) or types.is_list_view(type_):
        item = type_.value_type
        if types.is_struct(item) and {"role", "content"} <= {
            item.field(i).name for i in range(item.num_fields)
        }:
            return "messages"
    return "other"


_ACCEPTS = {"text": ("string",), "prompt": ("string", "messages"), "response": ("string",),
            "messages": ("messages",), "chosen": ("string", "messages"), "rejected": ("string", "messages")}  # fmt: skip


def resolve_columns(schema: Any, wanted: dict[str, str], where: str) -> Columns:
    """The columns to score ``where`` (a table's name) by: those ``wanted`` (``--column``), the
    rest found by their field names. A table with ``chosen`` and ``rejected`` holds pairs.

    Raises:
        UsageError: a named column is missing, the form is missing or ambiguous, or a column holds
            the wrong type (the message names the column).
    """
    pa = need_data_extra()
    names = list(schema.names)
    for field, name in wanted.items():
        if name not in names:
            raise UsageError(
                f"{where} has no column {name!r} (for {field})", hint=f"its columns: {_list(names)}"
            )
    fields = dict(wanted) if any(f in _CONTENT for f in wanted) else {**_default_form(names, where), **wanted}
    for extra in ("id", "subset"):
        if extra not in fields and extra in names:
            fields[extra] = extra
    pairs = "chosen" in fields or "rejected" in fields
    if pairs and not ("chosen" in fields and "rejected" in fields):
        raise UsageError(f"{where}: a preference pair needs both 'chosen' and 'rejected' columns")
    if "response" in fields and "prompt" not in fields:
        raise UsageError(f"{where}: 'response' needs a 'prompt' column")
    forms = [f for f in ("text", "prompt", "messages") if f in fields and not (pairs and f in ("prompt",))]
    if pairs and forms:
        raise UsageError(f"{where}: a pair's columns and {forms[0]!r} are both given; give one")
    if len(forms) > 1:
        raise UsageError(f"{where}: {' and '.join(repr(f) for f in forms)} are both given; give one")
    for field, name in fields.items():
        kind = _kind(pa, schema.field(name).type)
        accepted = _ACCEPTS.get(field)
        if accepted is not None and kind not in accepted and kind != "null":
            what = " or ".join("strings" if a == "string" else "message lists" for a in accepted)
            raise UsageError(
                f"{where}: column {name!r} ({field}) holds {schema.field(name).type}, not {what}",
                hint="choose another column with --column FIELD=NAME",
            )
    return Columns(fields, pairs)


def _default_form(names: list[str], where: str) -> dict[str, str]:
    """The scored columns found by name: a pair, else one of messages, prompt (+ response), text."""
    if "chosen" in names and "rejected" in names:
        return {f: f for f in ("prompt", "chosen", "rejected") if f in names}
    forms = [f for f in ("messages", "prompt", "text") if f in names]
    if not forms:
        raise UsageError(
            f"{where} has no column to score (its columns: {_list(names)})",
            hint="name one with --column text=NAME (or prompt=, response=, messages=, chosen= and rejected=)",
        )
    if len(forms) > 1:
        raise UsageError(
            f"{where} has columns {' and '.join(repr(f) for f in forms)}: which one to score?",
            hint=f"say it with --column {forms[0]}={forms[0]}",
        )
    if forms[0] == "prompt" and "response" in names:
        return {"prompt": "prompt", "response": "response"}
    return {forms[0]: forms[0]}


def _list(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:12])
    return shown + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def row_error(exc: InputError, columns: Columns | None = None) -> str:
    """A record's error as a table's: ``row N`` for ``line N``, the column for the field."""
    text = str(exc)
    if exc.line is not None:
        text = re.sub(rf"^line {exc.line}:", f"row {exc.line}:", text)
    for field, name in columns.fields.items() if columns is not None else ():
        text = text.replace(
            f"field '{field}'", f"column '{name}'" if name == field else f"column '{name}' ({field})"
        )
    return text


def batch_records(batch: Any, columns: Columns, first_row: int, *, skip_bad: bool = False) -> list[Record]:
    """The records of a batch's rows (numbered from ``first_row``, 1-based), checked as JSON lines are.

    A null optional value (a pair's prompt, a response, a subset) is read as absent.

    Raises:
        InputError: a bad row (``row N: ...``), unless ``skip_bad`` (it then gets an error record).
    """
    data = {field: batch.column(name).to_pylist() for field, name in columns.fields.items()}
    optional = ("prompt", "subset") if columns.pairs else ("response", "subset")
    records: list[Record] = []
    for index in range(batch.num_rows):
        row = first_row + index
        obj = {
            f: values[index] for f, values in data.items() if values[index] is not None or f not in optional
        }
        try:
            records.append(record_from_object(obj, row, pairs=columns.pairs))
        except InputError as exc:
            message = row_error(exc, columns)
            if not skip_bad:
                raise InputError(message, line=row, hint=exc.hint) from None
            record = Record(line=row, error=message.removeprefix(f"row {row}: "))
            if "id" in obj:
                record.id, record.has_id = obj["id"], True
            records.append(record)
    return records


class TableSource:
    """A table's schema and its rows as record batches of at most ``batch_rows`` rows, in order.

    Args:
        name: What error messages call it (a path, a dataset name).
        schema: The pyarrow schema.
        batches: A function giving the batches (called once).
        num_rows: The row count when known without reading (Parquet's footer, a dataset).
    """

    def __init__(self, name: str, schema: Any, batches: Any, num_rows: int | None = None) -> None:
        self.name = name
        self.schema = schema
        self._batches = batches
        self.num_rows = num_rows

    def iter_batches(self, batch_rows: int) -> Iterator[Any]:
        """Record batches of at most ``batch_rows`` rows.

        Raises:
            InputError: the file is corrupt past its header (naming the first row not read).
        """
        pa = need_data_extra()
        read = 0
        try:
            for batch in self._batches(batch_rows):
                for start in range(0, batch.num_rows, batch_rows):
                    part = batch.slice(start, batch_rows)
                    read += part.num_rows
                    yield part
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                f"{self.name}: cannot read the rows after row {read}: {first_line(exc)}", line=read + 1
            ) from exc


def open_table(path: str) -> TableSource:
    """A Parquet (``.parquet``), Arrow IPC (``.arrow``, ``.feather``) or JSON Lines file, or a folder
    of Parquet files (or one saved with ``datasets``' ``save_to_disk``).

    Raises:
        UsageError: no such file, an unknown suffix.
        InputError: the file is not what its suffix says (corrupt, truncated).
    """
    pa = need_data_extra()
    file = Path(path)
    if not file.exists():
        raise UsageError(f"input file {path} not found")
    if file.is_dir():
        if (file / "state.json").is_file() or (file / "dataset_dict.json").is_file():
            return open_dataset(str(file), split=None)
        return _open_with_dataset(path, "parquet")
    kind = TABLE_SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise UsageError(f"{path}: unknown table suffix", hint="use .parquet, .arrow, .feather or .jsonl")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(str(file), memory_map=True)
            return TableSource(
                path, parquet.schema_arrow,
                lambda rows: parquet.iter_batches(batch_size=rows, use_threads=False),
                parquet.metadata.num_rows,
            )  # fmt: skip
        if kind == "arrow":
            return _open_arrow(pa, path)
        return _open_with_dataset(path, "json")
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path} is not a readable {kind} file: {first_line(exc)}") from exc


def _open_arrow(pa: Any, path: str) -> TableSource:
    """An Arrow IPC file (random access) or stream (what ``datasets`` writes), memory-mapped."""
    source = pa.memory_map(path)
    try:
        reader = pa.ipc.open_file(source)
        return TableSource(
            path, reader.schema,
            lambda rows: (reader.get_batch(i) for i in range(reader.num_record_batches)),
            sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches)),
        )  # fmt: skip
    except pa.ArrowInvalid:
        stream = pa.ipc.open_stream(pa.memory_map(path))
        return TableSource(path, stream.schema, lambda rows: iter(stream))


def _open_with_dataset(path: str, kind: str) -> TableSource:
    """JSON Lines (or a folder of Parquet files) through pyarrow.dataset: streamed, in order."""
    import pyarrow.dataset as ds
    import pyarrow.json as pj

    fmt: Any = (
        ds.JsonFileFormat(read_options=pj.ReadOptions(block_size=_JSON_BLOCK)) if kind == "json" else kind
    )
    dataset = ds.dataset(path, format=fmt)
    return TableSource(
        path, dataset.schema,
        lambda rows: dataset.to_batches(batch_size=rows, batch_readahead=2, fragment_readahead=1),
    )  # fmt: skip


def open_dataset(
    name: str, *, split: str | None, config: str | None = None, revision: str | None = None
) -> TableSource:
    """A Hugging Face dataset split: a hub id (through the datasets cache, so it works offline once
    cached), a local dataset folder, or a folder saved with ``save_to_disk``. Its Arrow files are
    memory-mapped, so rows are read as they are scored.

    Raises:
        InputError: the dataset, config or split cannot be loaded (the message says why).
    """
    need_data_extra()
    try:
        import datasets
    except ImportError as exc:
        raise UsageError("--dataset needs the datasets package", hint="pip install 'vhctl[data]'") from exc

    folder = Path(name)
    try:
        if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
            if isinstance(loaded, datasets.DatasetDict):
                splits = list(loaded)
                if split is None and len(splits) == 1:
                    split = splits[0]
                if split not in loaded:
                    raise InputError(f"dataset {name} has no split {split!r} (it has: {', '.join(splits)})")
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(name, config, split=split or "train", revision=revision)
    except InputError:
        raise
    except Exception as exc:  # datasets raises many kinds: not found, offline, unknown split or config
        raise InputError(f"cannot load dataset {name!r}: {first_line(exc)}") from exc
    table = loaded.with_format("arrow")
    label = name if split is None else f"{name} ({split})"
    return TableSource(label, loaded.data.schema, lambda rows: _dataset_batches(table, rows), len(loaded))


def _dataset_batches(table: Any, rows: int) -> Iterator[Any]:
    for part in table.iter(batch_size=rows):
        yield from part.to_batches()
