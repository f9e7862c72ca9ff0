"""Scoring a table (Parquet, Arrow, JSON Lines, a Hugging Face dataset) batch by batch, in order.

The rows of each input batch become records (two per preference pair), the scorer streams their
results in order, and each batch comes back whole with one result per row, to be written as
Parquet (:class:`~vhctl.io.table_out.ParquetOutput`) or as JSON Lines. Memory holds the batches
whose rows are in the scorer's current window, whatever the table's length.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vhctl.errors import InputError, UsageError
from vhctl.io.records import Record
from vhctl.io.table_out import ParquetOutput, result_schema
from vhctl.io.tables import (
    Columns,
    TableSource,
    batch_records,
    open_dataset,
    open_table,
    resolve_columns,
    row_error,
)
from vhctl.scoring.items import ScoreStats
from vhctl.scoring.options import ScoreOptions
from vhctl.scoring.pairs import PairScoring, PairSummary
from vhctl.scoring.session import ScoringSession

__all__ = [
    "TableInput",
    "TableRun",
    "open_scoring",
    "score_batches",
    "start_table_run",
    "write_parquet",
]

Score = Callable[[Iterable[Record]], Iterator[dict[str, Any]]]


def open_scoring(options: ScoreOptions, *, progress: bool = False) -> ScoringSession:
    """The scoring session of the table and Ray paths: results mark truncated records."""
    return ScoringSession.open(dataclasses.replace(options, mark_truncated=True), progress=progress)


@dataclass(frozen=True)
class TableInput:
    """Where a table comes from: ``path`` (a file or folder) or ``dataset`` (a hub id or dataset folder)."""

    path: str | None = None
    dataset: str | None = None
    split: str | None = None
    config: str | None = None
    revision: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    def open(self) -> TableSource:
        if self.dataset is not None:
            return open_dataset(self.dataset, split=self.split, config=self.config, revision=self.revision)
        if self.path is None or self.path == "-":
            raise UsageError("a table is read from a file: give --input FILE or --dataset NAME")
        return open_table(self.path)


def score_batches(
    source: TableSource, columns: Columns, score: Score, *, batch_rows: int, skip_bad: bool,
    summary: PairSummary | None = None,
) -> Iterator[tuple[Any, list[dict[str, Any]]]]:  # fmt: skip
    """Each input batch with its rows' results (one per row, pairs merged), in order.

    Raises:
        InputError: a bad row or corrupt data, naming the row (unless ``skip_bad`` for a bad row).
    """
    batches: deque[Any] = deque()
    pairing = PairScoring(summary)

    def records() -> Iterator[Record]:
        row = 1
        for batch in source.iter_batches(batch_rows):
            found = batch_records(batch, columns, row, skip_bad=skip_bad)
            batches.append(batch)
            row += batch.num_rows
            yield from found

    done: list[dict[str, Any]] = []
    try:
        for result in pairing.merge(score(pairing.expand(records()))):
            done.append(result)
            while batches and len(done) >= batches[0].num_rows:
                batch = batches.popleft()
                yield batch, done[: batch.num_rows]
                done = done[batch.num_rows :]
    except InputError as exc:
        raise InputError(row_error(exc, columns), line=exc.line, hint=exc.hint) from None
    while batches:  # empty batches at the end
        yield batches.popleft(), []


@dataclass
class TableRun:
    """A table being scored: ``batches`` yields each input batch with its results."""

    session: ScoringSession
    source: TableSource
    columns: Columns
    batches: Iterator[tuple[Any, list[dict[str, Any]]]]
    summary: PairSummary | None

    @property
    def stats(self) -> ScoreStats:
        return self.session.stats

    def results(self) -> Iterator[dict[str, Any]]:
        """The results alone, one per row (for JSON Lines output)."""
        for _, results in self.batches:
            yield from results


def start_table_run(options: ScoreOptions, table: TableInput, *, progress: bool = False) -> TableRun:
    """Open the table (its columns checked first, before the model loads), then the model."""
    source = table.open()
    columns = resolve_columns(source.schema, table.columns, source.name)
    session = open_scoring(options, progress=progress)
    summary = PairSummary(by="reward" if options.reward is not None else "value") if columns.pairs else None
    expected = source.num_rows * (2 if columns.pairs else 1) if source.num_rows is not None else None
    batches = score_batches(
        source, columns, lambda records: session.score(records, expected_records=expected),
        batch_rows=options.window_records,
        skip_bad=options.skip_bad, summary=summary,
    )  # fmt: skip
    return TableRun(session, source, columns, batches, summary)


def write_parquet(run: TableRun, dest: str, options: ScoreOptions) -> int:
    """Write the run's rows with their results to ``dest`` (atomically); the number of rows written."""
    added = result_schema(
        pairs=run.columns.pairs, reward=options.reward is not None, per_token=options.per_token,
        errors=options.skip_bad,
    )  # fmt: skip
    with ParquetOutput(dest, run.source.schema, added) as output:
        for batch, results in run.batches:
            output.write(batch, results)
        output.commit()
    return output.rows
