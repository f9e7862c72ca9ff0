"""``vhctl serve``: the value (or reward) model behind HTTP, batching what concurrent clients send.

Modules: ``bodies`` (request JSON into records), ``worker`` (the model thread and its bounded
queue), ``results`` (answers as ``vhctl score`` writes them), ``app`` (the Starlette endpoints, the
API key, the request log), ``metrics`` (Prometheus), ``server`` (uvicorn, signals, the drain),
``model`` (loading), ``security`` (the key, loopback addresses). Needs the ``vhctl[serve]`` extra.
"""
