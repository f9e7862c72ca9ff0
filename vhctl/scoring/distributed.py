"""Data-parallel plumbing for ``vhctl score`` under ``torchrun`` or ``accelerate launch``.

vhctl does not start processes or build clusters: the launcher users already run does that and
sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. This module reads them, joins the ``torch.distributed`` process group (gloo for
CPU work, NCCL added for CUDA) and gives the scorer the few collectives it needs:

- :meth:`Group.records`: one input stream for every rank. Rank 0 reads (stdin can only be read
  by one process) and broadcasts the records a window at a time; a bad line travels as a marker,
  so every rank stops at the same place with the same error;
- :meth:`Group.all_gather`: each rank's share of a window's results, to every rank;
- :meth:`Group.agree`: ranks that may have failed independently (loading, devices) share the
  first failure, so none waits forever in a collective the failed one never joins;
- :meth:`Group.request_stop`: rank 0 stops everyone at the next window (its reader went away).

Object collectives always go through gloo on the CPU (``cpu:gloo,cuda:nccl`` when CUDA is used),
so they need no GPU memory and no ``torch.cuda.set_device`` ordering. Nothing here prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vhctl.errors import InputError, PeerError, UsageError, VhctlError

if TYPE_CHECKING:
    from vhctl.io.records import Record

__all__ = [
    "Group",
    "Launch",
    "PeerError",
    "Stopped",
    "backend_for",
    "launch_from_env",
    "local_device",
    "start",
]


class Stopped(Exception):
    """Rank 0 asked every rank to stop early (its output was closed); not an error."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch (from the launcher's environment variables).

    Attributes:
        rank: This process's global rank, 0..world-1.
        world: Number of processes in the job (all nodes).
        local_rank: Rank on this node: the CUDA device index it uses.
        local_world: Processes on this node.
    """

    rank: int
    world: int
    local_rank: int
    local_world: int


def _int_env(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = environ.get(name)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise UsageError(
            f"{name} is not set, but WORLD_SIZE={environ.get('WORLD_SIZE')} is",
            hint="start data-parallel scoring with torchrun or accelerate launch, which set them all",
        )
    try:
        return int(text)
    except ValueError:
        raise UsageError(
            f"{name}={text!r} is not an integer", hint="let torchrun or accelerate set it"
        ) from None


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is part of, or None when it runs alone (``WORLD_SIZE`` unset or 1).

    Raises:
        UsageError: ``WORLD_SIZE`` says several processes but the rest of the launcher's variables
            are missing or inconsistent.
    """
    env = os.environ if environ is None else environ
    world = _int_env(env, "WORLD_SIZE", default=1)
    if world <= 1:
        return None
    rank = _int_env(env, "RANK")
    local_rank = _int_env(env, "LOCAL_RANK", default=rank)
    local_world = _int_env(env, "LOCAL_WORLD_SIZE", default=world)
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise UsageError(
                f"{name} is not set, but WORLD_SIZE={world} is",
                hint="start data-parallel scoring with torchrun or accelerate launch, which set them all",
            )
    return Launch(rank=rank, world=world, local_rank=local_rank, local_world=local_world)


def backend_for(cuda: bool) -> str:
    """gloo for CPU work; with CUDA, NCCL for CUDA tensors and gloo for the CPU object collectives."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def local_device(spec: str, launch: Launch) -> str:
    """The device a rank uses: ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` when CUDA is there.

    An explicit ``cpu`` or ``cuda:N`` is kept as given.
    """
    import torch

    value = (spec or "auto").strip().lower()
    if value == "cuda" or (value == "auto" and torch.cuda.is_available()):
        return f"cuda:{launch.local_rank}"
    return value


def start(launch: Launch, *, cuda: bool) -> Group:
    """Join the launcher's process group (``env://`` rendezvous) and return it as a :class:`Group`.

    ``cuda``: the ranks compute on CUDA (NCCL is added to gloo when this torch has both).

    Raises:
        UsageError: torch was built without distributed support.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed", hint="run a single process")
    if not dist.is_initialized():
        import torch

        # CUDA asked for where there is none is reported after joining (every rank alike), not here.
        cuda = cuda and torch.cuda.is_available() and dist.is_nccl_available()
        dist.init_process_group(backend=backend_for(cuda), rank=launch.rank, world_size=launch.world)
    return Group(launch)


class Group:
    """The collectives data-parallel scoring uses, over the default process group.

    Every method is a collective: all ranks call it, in the same order.
    """

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.rank = launch.rank
        self.world = launch.world
        self._stop = False
        self._left = 0  # records of the chunk being yielded, not yet yielded

    @property
    def is_main(self) -> bool:
        """Rank 0 reads stdin and writes the output."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world)``, the scorer's ``shard`` argument."""
        return (self.rank, self.world)

    # ------------------------------------------------------------------ collectives

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank.

        Raises:
            Stopped: a rank asked to stop (see :meth:`request_stop`); raised on every rank alike.
        """
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, (self._stop, obj))
        if any(stop for stop, _ in out):
            raise Stopped()
        return [payload for _, payload in out]

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (the argument is ignored elsewhere)."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def agree(self, failure: tuple[str, int] | None) -> None:
        """Share each rank's failure (``(message, exit code)`` or None); raise the first one everywhere.

        Raises:
            PeerError: some rank failed; the message names the rank when it is not rank 0.
        """
        failures = self.all_gather(failure)
        for rank, item in enumerate(failures):
            if item is not None:
                message, code = item
                raise PeerError(message if rank == 0 else f"rank {rank}: {message}", exit_code=code)

    def ready(self) -> bool:
        """Whether the chunk :meth:`records` is yielding has more records (a scorer's ``ready``)."""
        return self._left > 0

    def request_stop(self) -> None:
        """Ask every rank to stop at the next window (rank 0 calls this when its output is closed)."""
        self._stop = True

    def close(self) -> None:
        """Leave the process group together (safe to call twice, or after a failure).

        Every rank waits for the others first: a rank tearing gloo down while a peer still
        finishes the last collective could abort that peer (``terminate called without an active
        exception``, seen about once in 25 runs). A rank that failed may not reach the barrier;
        the others then give up on it after a short timeout and leave anyway.
        """
        import datetime

        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            try:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=30), wait_all_ranks=True)
            except Exception:  # noqa: BLE001 - a rank is gone, or the backend has no such barrier: leave
                pass
            dist.destroy_process_group()

    # ------------------------------------------------------------------ input

    def records(
        self, source: Iterable[Record] | None, *, chunk: int, ready: Callable[[], bool] | None = None
    ) -> Iterator[Record]:
        """One record stream on every rank: rank 0 reads ``source`` ``chunk`` records at a time and broadcasts.

        Other ranks pass ``source=None`` (stdin may only be read by one process). A bad line read
        by rank 0 is sent along as a marker after the records before it, and raised on every rank
        at the same place (rank 0 raises the original exception). A stop request ends the stream.

        ``ready`` (rank 0, ``--stream``): a chunk also ends at a pause in the input. Every rank's
        scorer then takes :meth:`ready` as its own, so all of them end their windows where rank 0's
        chunks end, and plan the same batches.

        Raises:
            InputError: a bad line (see :func:`vhctl.io.records.iter_records`).
            PeerError: rank 0 could not read its input (e.g. an I/O error).
        """
        iterator = iter(source) if (self.is_main and source is not None) else None
        while True:
            original: BaseException | None = None
            payload: tuple[list[Record], bool, tuple[Any, ...] | None] | None = None
            if self.is_main:
                batch: list[Record] = []
                end = self._stop or iterator is None
                marker: tuple[Any, ...] | None = None
                while not end and len(batch) < chunk:
                    if batch and ready is not None and not ready():
                        break
                    try:
                        batch.append(next(iterator))  # type: ignore[arg-type]
                    except StopIteration:
                        end = True
                    except InputError as exc:
                        original, marker = exc, ("input", exc.message, exc.line, exc.hint)
                    except (VhctlError, OSError) as exc:
                        code = exc.exit_code if isinstance(exc, VhctlError) else 1
                        original, marker = exc, ("error", str(exc), code)
                    if marker is not None:
                        break
                payload = (batch, end, marker)
            batch, end, marker = self.broadcast(payload)
            self._left = len(batch)
            for record in batch:
                self._left -= 1
                yield record
            if marker is not None:
                if original is not None:
                    raise original
                if marker[0] == "input":
                    _, message, line, hint = marker
                    raise InputError(message, line=line, hint=hint)
                raise PeerError(f"rank 0: {marker[1]}", exit_code=int(marker[2]))
            if end:
                return
