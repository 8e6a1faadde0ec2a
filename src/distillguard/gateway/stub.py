"""A stub OpenAI-compatible upstream, for tests, demos and the latency benchmark.

It answers like a reasoning model: a ``reasoning_content`` field, a ``<think>`` block in
``content`` (split across SSE chunks when streaming) and usage counting the reasoning tokens
(600 completion tokens), so output actions and long-answer evidence can be checked.
Use :class:`StubUpstream` as an ``httpx.MockTransport`` handler, or :func:`stub_app` as a real
ASGI server (uvicorn) when true HTTP is wanted; :func:`lean_stub_app` answers the same with a
fraction of the CPU (raw ASGI, for the load test, where the stub shares the cores).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

__all__ = ["REASONING", "StubUpstream", "completion", "lean_stub_app", "sse_chunks", "stub_app"]

REASONING = "secret chain of thought"
MODELS = ("m1", "frontier-x", "preview-1")


def sse_chunks(model: str = "m1", text: str = "Hello world") -> list[dict[str, Any]]:
    """Chunks of one streamed answer; the ``<think>`` tags are split across chunks."""
    base = {"id": "c1", "object": "chat.completion.chunk", "model": model}
    return [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            {**base, "choices": [{"index": 0, "delta": {"reasoning_content": REASONING}}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "<thi"}}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "nk>hidden</th"}}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "ink>" + text}}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 40, "completion_tokens": 600}}]


def sse_body(model: str = "m1") -> bytes:
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in sse_chunks(model))
            + "data: [DONE]\n\n").encode()


def completion(model: str = "m1") -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "reasoning_content": REASONING,
                "content": "<think>hidden</think>Answer."}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 600}}


class StubUpstream:
    """``httpx.MockTransport`` handler that records every request body it receives."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": m, "object": "model"} for m in MODELS]})
        body = json.loads(request.content)
        self.calls.append(body)
        if body.get("stream"):
            return httpx.Response(200, content=sse_body(body["model"]),
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=completion(body["model"]))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def stub_app() -> FastAPI:
    """The same stub as a FastAPI app (for uvicorn on 127.0.0.1)."""
    app = FastAPI()
    app.state.calls = []

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"}
                                                         for m in MODELS]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.calls.append(body)
        if body.get("stream"):
            async def gen() -> Any:
                for c in sse_chunks(body["model"]):
                    yield f"data: {json.dumps(c)}\n\n".encode()
                yield b"data: [DONE]\n\n"
            return StreamingResponse(gen(), media_type="text/event-stream")
        return JSONResponse(completion(body["model"]))

    return app


def lean_stub_app() -> Any:
    """The stub's chat completions as a bare ASGI app (no framework, no call recording).

    Same answers as :func:`stub_app` for ``POST /v1/chat/completions`` (streamed or not);
    404 for anything else. Used by the load test so that the upstream costs little CPU.
    """
    import orjson

    plain = {m: orjson.dumps(completion(m)) for m in MODELS}
    sse = {m: sse_body(m) for m in MODELS}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        if scope["path"] != "/v1/chat/completions" or scope["method"] != "POST":
            body, status, ctype = b'{"error": "not found"}', 404, b"application/json"
        else:
            req = orjson.loads(b"".join(chunks))
            model = req.get("model", "m1")
            if req.get("stream"):
                body, status, ctype = sse.get(model) or sse_body(model), 200, b"text/event-stream"
            else:
                body = plain.get(model) or orjson.dumps(completion(model))
                status, ctype = 200, b"application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app
