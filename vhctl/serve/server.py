"""Running the server: the listening socket, uvicorn in a thread, loading, signals and the drain.

uvicorn runs in a thread of its own, so the main thread keeps the signals: SIGTERM or SIGINT stop
accepting connections, let the requests in flight finish (up to ``drain_timeout`` seconds) and
return normally (exit 0), instead of uvicorn re-raising the signal once it is done.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vhctl._version import __version__
from vhctl.constants import SERVE_PREFIX_CACHE_MB
from vhctl.errors import VhctlError
from vhctl.scoring.options import ScoreOptions
from vhctl.scoring.session import ScoringSession
from vhctl.serve.app import AppConfig, build_app
from vhctl.serve.metrics import Metrics
from vhctl.serve.worker import ModelWorker

__all__ = ["HttpServer", "ServeOptions", "load_session", "serve", "server_score_options"]


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``vhctl serve`` takes (see ``docs/serving.md``): the scoring options, the HTTP side's."""

    model: ScoreOptions
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 4096
    max_body_bytes: int = 16 << 20
    api_key: str | None = None
    drain_timeout: float = 30.0
    get_reward_tokenize: str = (
        "whole"  # how /get_reward tokenizes a query by default (bodies.TOKENIZE_CHOICES)
    )


class HttpServer:
    """The app, its model worker and uvicorn in a background thread, on one listening socket.

    Args:
        options: What to serve and how.
        log: Where request lines go (None: nowhere).
    """

    def __init__(self, options: ServeOptions, *, log: Callable[[str], None] | None = None) -> None:
        import uvicorn

        self.options = options
        self.metrics = Metrics()
        self.worker = ModelWorker(
            max_queue=options.max_queue,
            window=options.model.window_records,
            on_batch=self.metrics.window,
            on_queue=self.metrics.queue.set,
        )
        self.config = AppConfig(
            max_body_bytes=options.max_body_bytes,
            api_key=options.api_key,
            log=log,
            get_reward_tokenize=options.get_reward_tokenize,
        )
        app = build_app(self.worker, self.metrics, self.config)
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=max(math.ceil(options.drain_timeout), 0),
            )
        )
        self._socket = _listen(options.host, options.port)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> str:
        """Start answering (``/health`` says 503 until :meth:`serve_model`); returns the URL."""
        self._thread = threading.Thread(target=self._serve, name="vhctl-serve-http", daemon=True)
        self._thread.start()
        return self.url

    def serve_model(self, session: ScoringSession) -> None:
        """Start scoring with ``session``: from now on ``/health`` says 200."""
        self.worker.start(session)
        self.config.info.update(_model_info(self.options, session))
        self.metrics.ready.set(1)

    def request_stop(self, *, force: bool = False) -> None:
        """Stop accepting; requests in flight finish (up to ``drain_timeout``), or not with ``force``.

        Safe from a signal handler: it only sets flags the server's loop reads.
        """
        self._uvicorn.should_exit = True
        if force:
            self._uvicorn.force_exit = True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the server to end; True once it has. Re-raises a failure of the server thread."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if self._failure is not None:
            raise self._failure
        return True

    def close(self) -> None:
        """Stop (draining first), then end the model worker."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(self.options.drain_timeout + 5.0)
        self.metrics.ready.set(0)
        self.worker.stop(timeout=1.0)
        self._socket.close()

    def _serve(self) -> None:
        try:
            asyncio.run(self._uvicorn.serve(sockets=[self._socket]))
        except BaseException as exc:  # reported by wait(): a server thread must not die silently
            self._failure = exc


def serve(
    options: ServeOptions,
    *,
    say: Callable[[str], None],
    log: Callable[[str], None] | None = None,
    load: Callable[[ScoreOptions], ScoringSession] | None = None,
) -> None:
    """``vhctl serve``: listen, load the model, answer until SIGTERM/SIGINT, drain, return.

    Args:
        options: What to serve.
        say: Where the start-up lines go (the URL once ready).
        log: Where request lines go.
        load: Opens the scoring session (a seam for tests; default :func:`load_session`).

    Raises:
        VhctlError: the address cannot be used, or the model cannot be loaded.
    """
    server = HttpServer(options, log=log)
    loaded = threading.Event()
    with _signals(server, loaded) as stopped:
        try:
            url = server.start()
            say(
                f"loading {options.model.ckpt} (listening on {url}; /health answers 503 until the model is loaded)"
            )
            session = (load or load_session)(options.model)
            if session.scorer().compiles_from_start:
                say("compiling the model's layers before answering (--compile on)")
                session.warm_up()
            server.serve_model(session)
            loaded.set()
            if not stopped.is_set():
                say(
                    f"ready: serving {options.model.ckpt} on {url} ({session.device}, "
                    f"{str(session.dtype).removeprefix('torch.')})"
                )
            while not server.wait(0.2):
                pass
        except _Stopped:
            pass
        finally:
            server.close()


class _Stopped(Exception):
    """A signal came while the model was loading: give up the load, exit 0."""


@contextmanager
def _signals(server: HttpServer, loaded: threading.Event) -> Iterator[threading.Event]:
    """SIGTERM/SIGINT: stop the server (the first one); a load in progress is abandoned."""
    stopped = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        again = stopped.is_set()
        stopped.set()
        server.request_stop(force=again and signum == signal.SIGINT)  # a second Ctrl-C: no drain
        if not loaded.is_set():
            raise _Stopped()

    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopped
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: one the system picks)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise VhctlError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="choose another --host or --port"
        ) from None
    return sock


def server_score_options(ckpt: str, **fields: Any) -> ScoreOptions:
    """The scoring options of a server: ``vhctl serve``'s defaults, and what a server always sets.

    A bad record is its request's 400, not the server's end (``skip_bad``); a record cut to the
    length limit is marked in its answer (``mark_truncated``); the prefix cache is on
    (:data:`~vhctl.constants.SERVE_PREFIX_CACHE_MB`) unless ``prefix_cache_mb`` says otherwise.
    """
    fields.setdefault("prefix_cache_mb", SERVE_PREFIX_CACHE_MB)
    return ScoreOptions(ckpt=ckpt, skip_bad=True, mark_truncated=True, **fields)


def load_session(options: ScoreOptions) -> ScoringSession:
    """The server's scoring session (no loading bar: a server's stderr is a log).

    Raises:
        VhctlError: the checkpoint, its tokenizer, reward adapter or normalisation cannot be used.
    """
    return ScoringSession.open(options, progress=False)


def _model_info(options: ServeOptions, session: ScoringSession) -> dict[str, Any]:
    return {
        "model": options.model.ckpt,
        "device": str(session.device),
        "dtype": str(session.dtype).removeprefix("torch."),
        "reward_adapter": session.reward,
        "normalize": session.normalization is not None,
        "max_length": session.max_length,
        "compiled": session.scorer().compiled,
        "prefix_cache_mb": session.options.prefix_cache_mb,
        "vhctl": __version__,
    }
