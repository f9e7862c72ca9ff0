"""``vhctl serve``: the value (or reward) model behind HTTP, batching what concurrent clients send.

Modules: ``bodies`` (request JSON into records), ``worker`` (the model thread and its bounded
queue, scoring through :class:`vhctl.scoring.session.ScoringSession`, the one ``vhctl score``
uses), ``app`` (the Starlette endpoints, the API key, the request log), ``metrics`` (Prometheus),
``server`` (uvicorn, signals, the drain, opening the session), ``security`` (the key, loopback
addresses). Needs the ``vhctl[serve]`` extra.
"""

__all__: list[str] = []
