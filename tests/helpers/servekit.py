"""Helpers for the ``vhctl serve`` tests: servers on 127.0.0.1 (ephemeral ports), expected values.

``served`` starts the real app under uvicorn in a thread, in this process; ``ServeProcess`` runs
the real ``vhctl serve`` command. Expected values always come from ``vhctl score`` itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from typer.testing import CliRunner  # noqa: E402

from vhctl.cli.app import app  # noqa: E402
from vhctl.io.records import Record  # noqa: E402
from vhctl.scoring.session import ScoringSession  # noqa: E402
from vhctl.serve.server import HttpServer, ServeOptions, server_score_options  # noqa: E402
from vhctl.serve.worker import Job  # noqa: E402

TIMEOUT = 60.0  # seconds any wait in these tests may take before it fails


@contextmanager
def served(
    loaded: ScoringSession | None,
    *,
    log: list[str] | None = None,
    **options: Any,
) -> Iterator[HttpServer]:
    """An :class:`HttpServer` on 127.0.0.1 with an ephemeral port, serving the session ``loaded``
    (None: still loading)."""
    opts = ServeOptions(
        model=loaded.options if loaded is not None else server_score_options("tiny"),
        host="127.0.0.1",
        port=0,
        **options,
    )
    server = HttpServer(opts, log=log.append if log is not None else None)
    server.start()
    try:
        if loaded is not None:
            server.serve_model(loaded)
        yield server
    finally:
        server.close()


def score_cli(ckpt: Path, records: list[Any], *args: str) -> list[dict[str, Any]]:
    """``vhctl score CKPT ARGS`` on ``records`` as JSON lines (strings as text lines): its output objects."""
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    result = CliRunner().invoke(app, ["score", str(ckpt), "--device", "cpu", *args], input=lines)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_same_results(got: list[dict[str, Any]], expected: list[dict[str, Any]], tol: float = 1e-5) -> None:
    """The same objects as ``vhctl score``'s lines: same keys and ids, numbers within ``tol``."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert set(g) - {"truncated"} == set(e), (g, e)
        assert g.get("id") == e.get("id")
        for key in ("value", "reward"):
            if key in e:
                assert abs(g[key] - e[key]) <= tol, (key, g[key], e[key])
        if "values" in e:
            assert len(g["values"]) == len(e["values"])
            assert max(abs(a - b) for a, b in zip(g["values"], e["values"], strict=True)) <= tol


def wait_for(condition: Any, what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition()`` until true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Gate:
    """Holds the model worker on a job of its own until :meth:`open`: requests then stay queued.

    The worker asks each job it takes whether it was cancelled; this job's answer waits for the
    gate (and is "yes", so nothing of it is scored).
    """

    def __init__(self, server: HttpServer) -> None:
        self.taken = threading.Event()
        self.released = threading.Event()

        def cancelled() -> bool:
            self.taken.set()
            self.released.wait(TIMEOUT)
            return True

        server.worker.submit(
            Job([Record(line=1, text="gate")], False, lambda outcome: None, cancelled=cancelled)
        )
        assert self.taken.wait(TIMEOUT), "the worker never took the gate job"

    def open(self) -> None:
        self.released.set()


class ServeProcess:
    """The real ``vhctl serve`` in a subprocess on an ephemeral port; its URL from the ready line."""

    def __init__(self, ckpt: Path, *args: str, quiet: bool = False) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        port = free_port() if quiet else 0  # -q prints no URL: give the port
        command = [
            sys.executable,
            "-m",
            "vhctl",
            *(["-q"] if quiet else []),
            "serve",
            str(ckpt),
            "--port",
            str(port),
            "--device",
            "cpu",
            *(() if "--compile" in args else ("--compile", "off")),
            *args,
        ]  # a compile takes minutes here
        self.stderr_lines: list[str] = []
        self.url: str | None = f"http://127.0.0.1:{port}" if quiet else None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            found = re.search(r"listening on (http://[0-9.]+:\d+)", line)
            if found:
                self.url = found.group(1)
            if line.startswith("ready:"):
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting

    def wait_ready(self) -> str:
        """Wait until /health answers 200 (after the ready line, unless -q); return the URL."""
        url = self.url
        if url is None:
            if not self._ready.wait(TIMEOUT) or self.url is None:
                raise AssertionError("vhctl serve did not start:\n" + self.stderr)
            url = self.url
        wait_for(lambda: self.proc.poll() is not None or _health(url) == 200, "/health to answer 200")
        if self.proc.poll() is not None:
            raise AssertionError(f"vhctl serve exited with {self.proc.returncode}:\n{self.stderr}")
        return url

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self) -> int:
        code = self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


def free_port() -> int:
    """A port nothing listens on now (for a server that cannot print its own)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(url: str) -> int:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code
    except httpx.TransportError:
        return 0
