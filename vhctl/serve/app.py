"""The HTTP side: a Starlette app whose handlers parse, queue and wait, and never run the model.

Endpoints:

- ``POST /get_reward``: OpenRLHF's remote reward model (``{"query": [...], "prompts": [...],
  "labels": [...]}`` -> ``{"rewards": [...], "scores": [...]}``);
- ``POST /v1/score``: records as ``vhctl score`` reads them -> its result objects, in order;
- ``POST /classify`` and ``GET /v1/models``: vLLM's pooling API (:mod:`vhctl.serve.pooling`);
- ``GET /health``: 503 until the model is loaded, then 200;
- ``GET /metrics``: Prometheus text.

:class:`Guard` wraps the app: the API key check (every path but ``/health``), one log line and the
metrics of every request.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from vhctl.io.records import Record
from vhctl.serve.bodies import BadRequest, parse_json, reward_request, score_request, special_texts
from vhctl.serve.metrics import CONTENT_TYPE, SCORING, Metrics
from vhctl.serve.pooling import classify_request, classify_response, models_response
from vhctl.serve.worker import Job, ModelWorker, Outcome

__all__ = ["ERROR_KEY", "AppConfig", "Guard", "RECORDS_KEY", "RETRY_AFTER", "authorized", "build_app"]

RECORDS_KEY = "vhctl.records"  # set in the ASGI scope by a handler: records answered (for the log)
ERROR_KEY = "vhctl.error"  # set in the ASGI scope on a refusal: why, and the record at fault (for the log)
RETRY_AFTER = "1"


@dataclass
class AppConfig:
    """What the HTTP side needs to know.

    Attributes:
        max_body_bytes: Larger bodies get 413.
        api_key: When set, every request but ``/health`` needs ``Authorization: Bearer <key>``.
        log: Where the request lines go (None: nowhere).
        info: Model facts for ``/health`` (shown to callers with the key).
        get_reward_tokenize: ``/get_reward``'s tokenization when a body does not say
            (``whole`` or ``apart``, see :func:`vhctl.serve.bodies.reward_request`).
    """

    max_body_bytes: int = 16 << 20
    api_key: str | None = None
    log: Callable[[str], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    get_reward_tokenize: str = "whole"


def build_app(worker: ModelWorker, metrics: Metrics, config: AppConfig) -> Guard:
    """The ASGI application to serve."""
    handlers = _Handlers(worker, metrics, config)
    app = Starlette(
        routes=[
            Route("/get_reward", handlers.get_reward, methods=["POST"]),
            Route("/v1/score", handlers.score, methods=["POST"]),
            Route("/classify", handlers.classify, methods=["POST"]),
            Route("/v1/models", handlers.models, methods=["GET"]),
            Route("/health", handlers.health, methods=["GET"]),
            Route("/metrics", handlers.metrics, methods=["GET"]),
        ]
    )
    return Guard(app, metrics, config)


class _Handlers:
    def __init__(self, worker: ModelWorker, metrics: Metrics, config: AppConfig) -> None:
        self.worker = worker
        self.metrics_ = metrics
        self.config = config
        self._specials: tuple[str, str] | None = None
        self._created = int(time.time())

    async def score(self, request: Request) -> Response:
        async def answer() -> Response:
            parsed = score_request(await self._read_json(request))
            results = await self._scored(request, parsed.records, parsed.per_token)
            return JSONResponse(results)

        return await _answering(request, answer)

    async def get_reward(self, request: Request) -> Response:
        async def answer() -> Response:
            data = await self._read_json(request)
            records = reward_request(data, self._special_texts(), default=self.config.get_reward_tokenize)
            results = await self._scored(request, records, False)
            key = "reward" if self._reward else "value"
            rewards = [result.get(key) for result in results]
            body: dict[str, Any] = {"rewards": rewards, "scores": rewards, "extra_logs": {}}
            cut = [i for i, result in enumerate(results) if result.get("truncated")]
            if cut:
                body["truncated"] = cut
            return JSONResponse(body)

        return await _answering(request, answer)

    async def classify(self, request: Request) -> Response:
        async def answer() -> Response:
            parsed = classify_request(await self._read_json(request))
            results = await self._scored(request, parsed.records, False)
            tokens = await asyncio.to_thread(self._count_tokens, parsed.records)
            key = "reward" if self._reward else "value"
            body = classify_response(results, parsed, key=key, model=self._model_name(), tokens=tokens)
            return JSONResponse(body)

        return await _answering(request, answer)

    async def models(self, request: Request) -> Response:
        async def answer() -> Response:
            if not self.worker.ready:
                raise BadRequest("the model is not ready", status=503)
            body = models_response(self._model_name(), self.config.info.get("max_length"), self._created)
            return JSONResponse(body)

        return await _answering(request, answer)

    async def health(self, request: Request) -> Response:
        if not self.worker.ready:
            state = "loading" if self.worker.session is None else "stopping"
            request.scope[ERROR_KEY] = {"error": f"not ready ({state})"}
            return JSONResponse(
                {"status": state},
                status_code=503,
                headers={"Retry-After": RETRY_AFTER},
            )
        body: dict[str, Any] = {"status": "ready"}
        if authorized(request.scope, self.config.api_key):
            body.update(self.config.info, queued=self.worker.queued)
        return JSONResponse(body)

    async def metrics(self, request: Request) -> Response:
        return Response(self.metrics_.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------ helpers

    @property
    def _reward(self) -> bool:
        loaded = self.worker.session
        return loaded is not None and loaded.reward is not None

    def _model_name(self) -> str:
        return str(self.config.info.get("model", "vhctl"))

    def _count_tokens(self, records: list[Record]) -> int:
        """Tokens of the inputs (the ``usage`` vLLM reports), counted as the scorer tokenizes them."""
        loaded = self.worker.session
        if loaded is None:
            return 0
        total = 0
        for record in records:
            if record.token_ids is not None:
                total += len(record.token_ids)
            elif record.text is not None:
                ids = loaded.tokenizer(record.text, add_special_tokens=record.add_special_tokens)["input_ids"]
                total += len(ids)
        return total

    def _special_texts(self) -> tuple[str, str]:
        loaded = self.worker.session
        if loaded is None:
            raise BadRequest("the model is not ready", status=503)
        if self._specials is None:
            self._specials = special_texts(loaded.tokenizer)
        return self._specials

    async def _read_json(self, request: Request) -> Any:
        """The body as JSON; 413 past ``max_body_bytes`` (read no further than that)."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BadRequest(
                f"the body is {declared} bytes, over the limit of {limit} (--max-body-bytes)", status=413
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(
                    f"the body is over the limit of {limit} bytes (--max-body-bytes)", status=413
                )
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    async def _scored(self, request: Request, records: list[Record], per_token: bool) -> list[dict[str, Any]]:
        """Queue the records as one job and wait for their results (the event loop stays free)."""
        if not self.worker.ready:
            raise BadRequest(
                "the model is not ready" if self.worker.session is None else "the server is stopping",
                status=503,
            )
        if not records:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def deliver(outcome: Outcome) -> None:
            loop.call_soon_threadsafe(_settle, future, outcome)

        self.worker.submit(Job(records, per_token, deliver, cancelled=future.cancelled))
        outcome = await future
        if isinstance(outcome, BaseException):
            raise outcome
        request.scope[RECORDS_KEY] = len(outcome)
        return outcome


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


async def _answering(request: Request, answer: Callable[[], Awaitable[Response]]) -> Response:
    """Run a handler; refusals become their status with ``{"error": ...}``, model failures a 500.

    Why a request was refused also goes into its scope, so that the request's log line says it.
    """
    try:
        return await answer()
    except BadRequest as exc:
        request.scope[ERROR_KEY] = exc.to_dict()
        headers = {"Retry-After": RETRY_AFTER} if exc.status == 503 else None
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)
    except ClientDisconnect:
        request.scope[ERROR_KEY] = {"error": "the client went away before the answer"}
        return Response(status_code=499)  # nobody reads it: only the log and the metrics see it
    except Exception as exc:  # a failure of the model while scoring
        body = {"error": f"scoring failed: {type(exc).__name__}: {exc}"}
        request.scope[ERROR_KEY] = body
        return JSONResponse(body, status_code=500)


def authorized(scope: Scope, key: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <key>`` (always, when no key is set).

    The comparison takes the same time whatever the bytes given, so the key cannot be guessed
    one character at a time.
    """
    if key is None:
        return True
    given = b""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            given = value
            break
    scheme, _, token = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode("utf-8"))


class Guard:
    """ASGI wrapper: the API key (401 without it, ``/health`` excepted), the request log, the metrics."""

    def __init__(self, app: Starlette, metrics: Metrics, config: AppConfig) -> None:
        self.app = app
        self.metrics = metrics
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts
        path = scope.get("path", "")

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        counted = path in SCORING
        if counted:
            self.metrics.in_flight.inc()
        try:
            if path != "/health" and not authorized(scope, self.config.api_key):
                scope[ERROR_KEY] = {"error": "missing or wrong API key"}
                refusal = JSONResponse(
                    {"error": "missing or wrong API key (send Authorization: Bearer <key>)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await refusal(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            if counted:
                self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            records = scope.get(RECORDS_KEY, 0)
            self.metrics.request(path, status, seconds, records)
            if self.config.log is not None:
                self.config.log(
                    f"{scope.get('method', '?')} {_printable(path)} {status} "
                    f"{records} record(s) {seconds * 1000:.1f} ms{_reason(scope, status)}"
                )


def _reason(scope: Scope, status: int) -> str:
    """``: <why>`` for an answer of 400 or more (with the index of the record at fault), else ``""``."""
    if status < 400:
        return ""
    error = scope.get(ERROR_KEY)
    if not isinstance(error, dict):
        return ": no route for this method and path" if status in (404, 405) else ""
    where = f" [record index {error['index']}]" if "index" in error else ""
    return f": {_printable(str(error.get('error', '')), 500)}{where}"


def _printable(path: str, limit: int = 200) -> str:
    """The path as it can go into one log line (a client chooses it)."""
    return "".join(c if c.isprintable() else "?" for c in path[:limit])
