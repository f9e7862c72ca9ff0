"""The baseline for ``bench_serve.py``: a reward server that does what OpenRLHF's ``serve_rm`` does.

OpenRLHF's ``openrlhf/cli/serve_rm.py`` is a FastAPI app on uvicorn whose ``POST /get_reward`` handler
takes ``query`` (the full texts), tokenises the request's texts with ``padding=True`` (no special
tokens added, truncation at ``max_len``), runs them as one batch through the reward model (backbone
and value head, no LM head) inside the handler, and answers ``{"rewards": [...], "scores": [...]}``.
Nothing is batched across requests: each request is its own forward pass, one at a time.

This file does the same with Starlette (what FastAPI is built on) and uvicorn, on the value-head model
of a vhctl checkpoint, with right padding and the value at each row's last real token (the same
numbers as OpenRLHF's left padding and last position).

    python benchmarks/serve_baseline.py CKPT --port 0      # prints "ready http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any


def build(ckpt: str, max_len: int) -> Any:
    import torch
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from transformers import AutoTokenizer

    from vhctl.checkpoint.load import load_checkpoint

    model = load_checkpoint(ckpt).eval()
    backbone = model.pretrained_model.base_model  # no LM head, as OpenRLHF's reward model
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    tokenizer.padding_side = "right"

    def rewards(queries: list[str]) -> list[float]:
        batch = tokenizer(
            queries,
            return_tensors="pt",
            add_special_tokens=False,
            max_length=max_len,
            padding=True,
            truncation=True,
        )
        with torch.no_grad():
            hidden = backbone(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            values = model.v_head(hidden).squeeze(-1)
        last = batch["attention_mask"].sum(dim=1) - 1
        return values[torch.arange(values.shape[0]), last].float().tolist()

    async def get_reward(request: Request) -> JSONResponse:
        data = await request.json()
        queries = data.get("query") or []
        scores = rewards(queries) if queries else []  # in the handler, as serve_rm does
        return JSONResponse({"rewards": scores, "scores": scores})

    return Starlette(routes=[Route("/get_reward", get_reward, methods=["POST"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=1024)
    args = parser.parse_args(argv)
    import uvicorn

    app = build(args.ckpt, args.max_len)
    sock = socket.socket()
    sock.bind((args.host, args.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    print(f"ready http://{host}:{port}", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
