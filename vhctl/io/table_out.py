"""Scoring output as a Parquet file: the input's columns plus the results', written atomically.

Rows are written as they are scored, a row group at a time, into a temporary file next to the
destination, which is renamed into place only once every row is in: a failure (a bad row, a full
disk, Ctrl-C) leaves no half-written output, and an existing file is replaced only then.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from vhctl.errors import UsageError, VhctlError
from vhctl.io.files import clean_stale_siblings, temp_sibling
from vhctl.io.tables import need_data_extra

__all__ = ["ROW_GROUP_ROWS", "ParquetOutput", "output_schema", "result_schema", "with_results"]

ROW_GROUP_ROWS = 8192  # rows per written row group (the unit a reader loads at once)

_PER_ANSWER = ("value", "reward", "values", "truncated")


def result_schema(*, pairs: bool, reward: bool, per_token: bool, errors: bool) -> list[tuple[str, Any]]:
    """The columns results add, in order, with their Arrow types (the same for every batch).

    Single records: ``value``, ``reward``, ``values``, ``truncated``; pairs: each of those as
    ``chosen_*`` and ``rejected_*``, then ``margin`` (and ``reward_margin``). ``error`` with
    ``--skip-bad``. Scores are float64 (the numbers JSON output writes, unrounded).
    """
    pa = need_data_extra()
    kinds = {"value": pa.float64(), "reward": pa.float64(), "values": pa.list_(pa.float64()),
             "truncated": pa.bool_()}  # fmt: skip
    keys = [k for k in _PER_ANSWER if (k != "reward" or reward) and (k != "values" or per_token)]
    columns: list[tuple[str, Any]] = []
    if pairs:
        for key in keys:
            columns += [(f"chosen_{key}", kinds[key]), (f"rejected_{key}", kinds[key])]
        columns.append(("margin", pa.float64()))
        if reward:
            columns.append(("reward_margin", pa.float64()))
    else:
        columns += [(key, kinds[key]) for key in keys]
    if errors:
        columns.append(("error", pa.string()))
    return columns


def with_results(
    batch: Any, results: list[dict[str, Any]], keep: list[str], added: list[tuple[str, Any]], schema: Any
) -> Any:
    """``batch``'s ``keep`` columns and the ``added`` result columns, as one record batch of ``schema``.

    A result without a truncation mark was not truncated (False); an error row has nulls.
    """
    pa = need_data_extra()
    arrays = [batch.column(name) for name in keep]
    for name, type_ in added:
        flag = name.endswith("truncated")
        values = [r.get(name, None if (not flag or "error" in r) else False) for r in results]
        arrays.append(pa.array(values, type=type_))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def output_schema(schema: Any, added: list[tuple[str, Any]]) -> tuple[Any, list[str]]:
    """The output's schema (input columns, then results; metadata dropped) and the input columns kept."""
    pa = need_data_extra()
    names = {name for name, _ in added}
    keep = [name for name in schema.names if name not in names]
    fields = [schema.field(name) for name in keep] + [pa.field(n, t) for n, t in added]
    return pa.schema(fields), keep


class ParquetOutput:
    """A Parquet file being written: :meth:`write` adds rows, :meth:`commit` puts it in place.

    Use as a context manager: leaving it without :meth:`commit` (an error) removes the temporary
    file. Input columns named like a result column are replaced by it.

    Args:
        dest: The file to write.
        schema: The input's pyarrow schema (its metadata is dropped: the columns change).
        results: :func:`result_schema`'s columns.
    """

    def __init__(self, dest: str | os.PathLike[str], schema: Any, results: list[tuple[str, Any]]) -> None:
        need_data_extra()
        import pyarrow.parquet as pq

        self.dest = Path(dest).absolute()
        if self.dest.is_dir():
            raise UsageError(f"--output {dest} is a folder", hint="give a file name ending in .parquet")
        if not self.dest.parent.is_dir():
            raise UsageError(f"--output {dest}: folder {self.dest.parent} does not exist")
        self._results = results
        self.schema, self._keep = output_schema(schema, results)
        clean_stale_siblings(self.dest)
        self._tmp = temp_sibling(self.dest)
        self._pending: list[Any] = []
        self._rows = 0
        self.rows = 0
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression="zstd")
        self._done = False

    def __enter__(self) -> ParquetOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()

    def write(self, batch: Any, results: list[dict[str, Any]]) -> None:
        """Add ``batch``'s rows with their ``results`` (one dict per row, in order)."""
        self._pending.append(with_results(batch, results, self._keep, self._results, self.schema))
        self._rows += batch.num_rows
        if self._rows >= ROW_GROUP_ROWS:
            self._flush()

    def write_scored(self, table: Any) -> None:
        """Add rows that already have the output's columns (a Ray actor's output), in order."""
        for batch in table.select(self.schema.names).cast(self.schema).to_batches():
            self._pending.append(batch)
            self._rows += batch.num_rows
        if self._rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            pa = need_data_extra()
            self._writer.write_table(pa.Table.from_batches(self._pending, schema=self.schema))
            self.rows += self._rows
        self._pending, self._rows = [], 0

    def commit(self) -> None:
        """Write what is left, close the file and rename it into place (replacing an older one)."""
        try:
            self._flush()
            self._writer.close()
            with open(self._tmp, "rb+") as file:
                os.fsync(file.fileno())
            os.replace(self._tmp, self.dest)
        except OSError as exc:
            self.abort()
            raise VhctlError(f"cannot write {self.dest}: {exc.strerror or exc}; nothing was written") from exc
        self._done = True

    def abort(self) -> None:
        """Close and remove the temporary file; the destination is left as it was."""
        self._done = True
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()
