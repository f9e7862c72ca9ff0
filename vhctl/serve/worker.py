"""The model worker: one thread that owns the model and scores what every request has queued.

HTTP handlers never touch the model. Each request becomes a :class:`Job` (its records and a way to
hand the outcome back); the worker takes every job that has arrived, up to ``window`` records, into
one scoring window of :class:`vhctl.scoring.Scorer`. So the records of concurrent requests are
length-sorted and batched together, and best-of-n responses posted as separate requests share
their prompt's forward pass. Results are cut back into jobs in order.

The queue is bounded (``max_queue`` records waiting): a request that does not fit is refused
at once (503) rather than left in an unbounded backlog.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vhctl.io.records import Record
from vhctl.scoring.session import ScoringSession
from vhctl.serve.bodies import BadRequest

__all__ = ["LINGER", "MAX_LINGER", "Job", "ModelWorker", "Outcome"]

Outcome = list[dict[str, Any]] | BadRequest | Exception
LINGER = 0.002  # seconds without a new job that end a burst
MAX_LINGER = 0.01  # the longest an idle worker waits for the rest of a burst


@dataclass
class Job:
    """The records of one request, and how its outcome gets back to it.

    Attributes:
        records: In request order.
        per_token: Whether the request wants per-token ``values``.
        deliver: Called once from the worker thread with the results (one dict per record, in
            order), a :class:`BadRequest` (a record the scorer refused) or an exception (a failure
            of the model).
        cancelled: True when nobody waits for the outcome any more (the job is then skipped).
    """

    records: list[Record]
    per_token: bool
    deliver: Callable[[Outcome], None]
    cancelled: Callable[[], bool] = lambda: False
    queued_at: float = field(default_factory=time.perf_counter)


class ModelWorker:
    """Owns the model thread and the bounded queue of jobs.

    Args:
        max_queue: Records that may wait for the model (the window being scored not counted).
        window: Records taken into one scoring window at most (the session's window is at least this).
        on_batch: Called after each scoring window with ``(records, tokens, shared_prompts)``
            (for metrics).
        on_queue: Called with the number of records waiting whenever it changes.
    """

    def __init__(
        self,
        *,
        max_queue: int,
        window: int,
        on_batch: Callable[[int, int, int], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.max_queue = max_queue
        self.window = max(1, window)
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._jobs: deque[Job] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._session: ScoringSession | None = None

    # ------------------------------------------------------------------ control

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and the worker takes jobs."""
        return self._thread is not None and not self._stopping

    @property
    def session(self) -> ScoringSession | None:
        """The scoring session (None before :meth:`start`)."""
        return self._session

    @property
    def max_length(self) -> int | None:
        """Tokens kept per record (the model's limit unless ``max_length`` was given); None before start."""
        return self._session.max_length if self._session is not None else None

    @property
    def queued(self) -> int:
        """Records waiting for the model."""
        return self._queued

    def start(self, session: ScoringSession) -> None:
        """Serve with ``session`` (its window holds at least one of this worker's) and start the thread."""
        if session.options.window_records < self.window:
            raise ValueError("the session's scoring window is smaller than the worker's")
        self._session = session
        self._thread = threading.Thread(target=self._run, name="vhctl-serve-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Score the jobs still queued, then end the thread (waiting up to ``timeout`` seconds)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse it at once.

        Raises:
            BadRequest: 503 while loading, stopping or when the queue is full; 413 for a job larger
                than the whole queue.
        """
        size = len(job.records)
        if size > self.max_queue:
            raise BadRequest(
                f"{size} records in one request; this server takes at most {self.max_queue} (--max-queue)",
                status=413,
            )
        with self._cond:
            if not self.ready:
                raise BadRequest(
                    "the model is not ready" if not self._stopping else "the server is stopping", status=503
                )
            if self._queued + size > self.max_queue:
                raise BadRequest(
                    f"the queue is full ({self._queued} records waiting); retry later", status=503
                )
            self._jobs.append(job)
            self._queued += size
            self._cond.notify()
            if self._on_queue is not None:  # under the lock: the gauge follows the queue in order
                self._on_queue(self._queued)

    # ------------------------------------------------------------------ the thread

    def _take(self) -> list[Job] | None:
        """Every job that has come, up to ``window`` records (at least one job); None to end.

        A worker that was idle waits a moment for the rest of a burst (until no job has come for
        ``LINGER`` seconds, ``MAX_LINGER`` at most): the requests a trainer sends together are
        then scored together, and best-of-n responses share their prompt's forward pass.
        """
        with self._cond:
            idle = not self._jobs
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if not self._jobs:
                return None
            if idle:
                self._linger()
            taken = [self._jobs.popleft()]
            count = len(taken[0].records)
            while self._jobs and count + len(self._jobs[0].records) <= self.window:
                job = self._jobs.popleft()
                taken.append(job)
                count += len(job.records)
            self._queued -= count
            if self._on_queue is not None:
                self._on_queue(self._queued)
        return taken

    def _linger(self) -> None:
        """(With the lock held) wait while jobs keep coming, up to ``MAX_LINGER`` and a full window."""
        deadline = time.perf_counter() + MAX_LINGER
        while self._queued < self.window and not self._stopping:
            remaining = min(LINGER, deadline - time.perf_counter())
            if remaining <= 0:
                return
            jobs = len(self._jobs)
            self._cond.wait(remaining)
            if len(self._jobs) == jobs:
                return  # nothing new: the burst is over

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while (jobs := self._take()) is not None:
            live = [job for job in jobs if not job.cancelled()]
            for per_token in (False, True):
                group = [job for job in live if job.per_token is per_token]
                if group:
                    self._score(group, per_token)

    def _score(self, jobs: list[Job], per_token: bool) -> None:
        """Score the jobs' records as one window and hand each job its results (or its failure)."""
        session = self._session
        assert session is not None
        records = [record for job in jobs for record in job.records]
        scorer = session.scorer(per_token)
        before = (scorer.stats.tokens, scorer.stats.shared_prompts)
        try:
            results = list(session.score(records, per_token=per_token))
        except Exception as exc:  # a failure of the model (out of memory...): these requests get a 500
            for job in jobs:
                _deliver(job, exc)
            return
        stats = scorer.stats
        if self._on_batch is not None:
            self._on_batch(len(records), stats.tokens - before[0], stats.shared_prompts - before[1])
        start = 0
        for job in jobs:
            part = results[start : start + len(job.records)]
            start += len(job.records)
            bad = next((i for i, result in enumerate(part) if "error" in result), None)
            if bad is not None:
                _deliver(job, BadRequest(f"record {bad}: {part[bad]['error']}", index=bad))
            else:
                _deliver(job, part)


def _deliver(job: Job, outcome: Outcome) -> None:
    try:
        job.deliver(outcome)
    except RuntimeError:  # the event loop has closed (the server stopped after --drain-timeout)
        pass
