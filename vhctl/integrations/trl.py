"""A reward function for TRL's ``GRPOTrainer`` (``reward_funcs=``), scored by vhctl.

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)``,
one entry per completion (the ``num_generations`` completions of a prompt side by side), wants one
float per completion back (None becomes NaN) and logs it under its ``__name__``. Prompts and
completions are strings (TRL's standard format) or lists of ``{"role", "content"}`` messages (its
conversational format). Each pair becomes one vhctl record, ``prompt`` + ``response`` or
``messages``, so the completions of one prompt share its forward pass (prefix sharing).

The records are scored in this process (a checkpoint, loaded once) or by a ``vhctl serve``
server (a URL: ``POST /v1/score``). Nothing here imports TRL.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from vhctl.errors import InputError, ServerError, UsageError
from vhctl.io.records import Record, parse_line
from vhctl.scoring.items import ScoreStats
from vhctl.scoring.options import ScoreOptions

__all__ = ["VhctlReward", "records_for", "trl_reward"]


def records_for(prompts: Sequence[Any], completions: Sequence[Any]) -> list[Record]:
    """vhctl records for TRL's prompts and completions (standard or conversational format).

    Raises:
        InputError: lengths differ, or a pair is neither two strings nor two message lists.
    """
    if len(prompts) != len(completions):
        raise InputError(f"{len(prompts)} prompts for {len(completions)} completions: give one prompt each")
    records = []
    for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        obj: dict[str, Any]
        if isinstance(prompt, str) and isinstance(completion, str):
            obj = {"prompt": prompt, "response": completion} if prompt else {"text": completion}
        elif isinstance(prompt, list) and isinstance(completion, list):
            obj = {"messages": [*prompt, *completion]}
        else:
            raise InputError(
                f"completion {index}: the prompt is {type(prompt).__name__} and the completion "
                f"{type(completion).__name__}; give two strings or two lists of messages",
                line=index + 1,
            )
        try:
            record = parse_line(json.dumps(obj, ensure_ascii=False), index + 1)
        except InputError as exc:
            raise InputError(
                f"completion {index}: {str(exc).removeprefix(f'line {index + 1}: ')}", line=index + 1
            ) from None
        assert record is not None  # an object's line is never blank
        records.append(record)
    return records


class _InProcess:
    """A scoring session on the checkpoint, loaded once; each call's records scored in input order."""

    def __init__(self, options: ScoreOptions) -> None:
        from vhctl.scoring.session import ScoringSession

        self._session = ScoringSession.open(options)

    @property
    def stats(self) -> ScoreStats:
        return self._session.stats

    def __call__(self, records: list[Record]) -> list[dict[str, Any]]:
        return list(self._session.score(records, expected_records=len(records)))


def _answer(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    reason = body.get("error") if isinstance(body, dict) else None
    return f"{exc.code} {reason or exc.reason}"


class _Server:
    """POSTs the records to ``{url}/v1/score``; retries a refused connection and 503 (loading, busy)."""

    stats = None

    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int, wait: float) -> None:
        self.endpoint = url.rstrip("/") + "/v1/score"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout, self.retries, self.wait = timeout, retries, wait

    def __call__(self, records: list[Record]) -> list[dict[str, Any]]:
        body = json.dumps({"records": [_as_object(r) for r in records]}, ensure_ascii=False).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.endpoint, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    results = json.loads(response.read())
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or attempt == self.retries:
                    raise ServerError(f"{self.endpoint} answered {_answer(exc)}", status=exc.code) from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt == self.retries:
                    raise ServerError(
                        f"{self.endpoint} could not be reached: {getattr(exc, 'reason', exc)}",
                        hint="is 'vhctl serve' running there?",
                    ) from None
            time.sleep(self.wait)
        if not isinstance(results, list) or len(results) != len(records):
            raise ServerError(f"{self.endpoint} did not answer one result per record")
        return results


def _as_object(record: Record) -> dict[str, Any]:
    if record.messages is not None:
        return {"messages": record.messages}
    if record.prompt is not None:
        return {"prompt": record.prompt, "response": record.response}
    return {"text": record.text}


class VhctlReward:
    """A TRL reward function: ``reward(prompts=..., completions=..., **kwargs) -> list[float | None]``.

    Build one with :func:`trl_reward`. The reward of a completion is the result's ``reward`` (a
    reward adapter) or else its ``value``; a non-finite one is None, which TRL reads as NaN.

    Attributes:
        __name__: the name TRL logs the rewards under (``rewards/<name>/mean``).
    """

    def __init__(self, backend: _InProcess | _Server, name: str) -> None:
        self._backend = backend
        self.__name__ = name

    @property
    def stats(self) -> ScoreStats | None:
        """What the in-process scorer counted so far (records, tokens, prompts shared); None for a server."""
        return self._backend.stats

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        """Score each completion after its prompt; TRL's other keyword arguments are ignored.

        Args:
            prompts: one prompt per completion (strings, or lists of messages).
            completions: the completions, in the same format as the prompts.
            **kwargs: what else TRL passes (``completion_ids``, dataset columns, ``trainer_state``...).

        Returns:
            One reward per completion, in order.
        """
        records = records_for(prompts, completions)
        if not records:
            return []
        results = self._backend(records)
        rewards: list[float | None] = []
        for result in results:
            value = result.get("reward", result.get("value"))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                rewards.append(None)
            else:
                rewards.append(float(value))
        return rewards

    def __repr__(self) -> str:
        return f"VhctlReward({self.__name__!r})"


def trl_reward(
    source: str,
    *,
    reward: str | None = None,
    normalize: bool = False,
    batch_size: int = 16,
    max_length: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    api_key: str | None = None,
    timeout: float = 300.0,
    retries: int = 5,
    retry_wait: float = 1.0,
    name: str = "vhctl_reward",
) -> VhctlReward:
    """A reward function for ``GRPOTrainer(reward_funcs=...)``, from a checkpoint or a server.

    Args:
        source: a vhctl checkpoint (folder, hub id, ``vhctl:tiny``), scored in this process, or the
            URL of a ``vhctl serve`` server (``http://host:port``), which scores with its own options.
        reward: checkpoint only: score with a reward adapter (``""``: the only one, else its name);
            None: the value head.
        normalize: checkpoint only: the checkpoint's reward normalisation, as ``score --normalize``.
        batch_size: checkpoint only: sequences per forward pass.
        max_length: checkpoint only: keep at most this many tokens of each text (its end).
        device: checkpoint only: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        dtype: checkpoint only: ``auto`` or a dtype name.
        api_key: server only: sent as ``Authorization: Bearer <key>``.
        timeout: server only: seconds to wait for one answer.
        retries: server only: how many times to retry a refused connection or a 503.
        retry_wait: server only: seconds between tries.
        name: the reward function's ``__name__`` (what TRL logs).

    Returns:
        The reward function.

    Raises:
        UsageError: a checkpoint option given with a URL.
    """
    if source.startswith(("http://", "https://")):
        local = {"reward": reward is not None, "normalize": normalize, "batch_size": batch_size != 16,
                 "max_length": max_length is not None, "device": device != "auto", "dtype": dtype != "auto"}  # fmt: skip
        given = [key for key, used in local.items() if used]
        if given:
            raise UsageError(
                f"{', '.join(given)}: options of a checkpoint scored in process; the server at {source} "
                "scores with its own (set them on 'vhctl serve')"
            )
        return VhctlReward(_Server(source, api_key, timeout, retries, retry_wait), name)
    options = ScoreOptions(ckpt=source, reward=reward, normalize=normalize, batch_size=batch_size,
                           max_length=max_length, device=device, dtype=dtype, compile="off")  # fmt: skip
    return VhctlReward(_InProcess(options), name)
