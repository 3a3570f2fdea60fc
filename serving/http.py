"""The ASGI pieces around the BentoML APIs: the upload guard middleware and the Starlette app
mounted at ``/`` (GET /instruments, /listeners/presets, /stats, /docs.json; WS /ws/stream)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from serving import runtime
from serving.live import LiveSession, control_message
from serving.params import ClientError, LiveParams, instruments_json, parse_params, resolve

UPLOAD_ROUTES = ("/rebalance", "/rebalance/stream")
_MAX_QUEUED_FRAMES = 512
"""Live frames received but not yet processed; beyond this the socket is not read (TCP
back-pressure on a client that sends faster than real time)."""
"""POST routes that take a multipart upload."""


def error_response(status: int, message: str) -> JSONResponse:
    """The JSON error every endpoint returns: ``{"error": message, "status": status}``."""
    return JSONResponse(ClientError(status, message).body(), status_code=status)


class BodyTooLarge(Exception):
    """The upload passed ``limits.max_upload_mb`` while being read."""


class UploadGuard:
    """ASGI middleware for the upload routes, before BentoML reads a byte of the body.

    - 413 when ``Content-Length`` exceeds the limit (nothing is read), or as soon as a body
      without one (chunked) passes it;
    - 415 unless the body is ``multipart/form-data`` (BentoML would otherwise fetch a URL
      sent as a JSON or text body).
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in UPLOAD_ROUTES:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        limit_mb = self.max_bytes / 2**20
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_error(send, 413, f"upload of {length} bytes exceeds the limit of "
                                                f"{limit_mb:g} MB")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if scope.get("method") == "POST" and ctype != "multipart/form-data":
            return await _send_error(
                send, 415, f"send multipart/form-data with an audio 'file' part and a JSON "
                           f"'params' part (got {ctype or 'no content type'})")
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> dict:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if too_large:  # replace whatever error BentoML made of the aborted read
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_error(send, 413, f"upload exceeds the limit of {limit_mb:g} MB")
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await _send_error(send, 413, f"upload exceeds the limit of {limit_mb:g} MB")


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps(ClientError(status, message).body()).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _runtime() -> runtime.Runtime:
    rt = runtime.current()
    if rt is None:
        raise ClientError(503, "service is starting")
    return rt


async def instruments(_: Request) -> JSONResponse:
    """GET /instruments: the instrument vocabulary and the model's slots."""
    return JSONResponse(instruments_json())


async def presets(_: Request) -> JSONResponse:
    """GET /listeners/presets: preset audiograms and their prescribed hearing-aid settings."""
    rt = _runtime()
    return JSONResponse({"presets": [p.to_json() for p in rt.presets.values()]})


async def stats(_: Request) -> JSONResponse:
    """GET /stats: this worker's live sessions and request counters."""
    rt = _runtime()
    return JSONResponse({"live_sessions": rt.live_sessions,
                         "max_live_sessions": int(rt.cfg.limits.max_live_sessions),
                         "live_step": rt.live_step_status,
                         "counters": dict(rt.counters)})


async def openapi(_: Request) -> JSONResponse:
    """GET /docs.json: BentoML's OpenAPI document plus the routes of this Starlette app."""
    from serving.openapi import document

    return JSONResponse(document())


async def live(websocket: WebSocket) -> None:
    """WS /ws/stream: one live causal session (protocol: :mod:`serving.live`)."""
    rt = runtime.current()
    if rt is None:
        await websocket.send_denial_response(error_response(503, "service is starting"))
        return
    if not rt.open_session():
        limit = int(rt.cfg.limits.max_live_sessions)
        await websocket.send_denial_response(
            error_response(429, f"too many live sessions (limit {limit}); retry later"))
        return
    try:
        await websocket.accept()
        await _live_session(websocket, rt)
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass  # client went away mid-stream: drop the session
    finally:
        rt.close_session()


async def _live_session(websocket: WebSocket, rt: runtime.Runtime) -> None:
    cfg = rt.cfg
    idle = float(cfg.limits.live_idle_seconds)
    limiter, _ = rt.limiters()
    try:
        message = await asyncio.wait_for(websocket.receive(), idle)
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is None:
            raise ClientError(400, "the first message must be the JSON params (text)")
        try:
            data = json.loads(message["text"])
        except json.JSONDecodeError as err:
            raise ClientError(400, f"params are not valid JSON: {err}") from None
        params = parse_params(LiveParams, data)
        assert isinstance(params, LiveParams)
        if params.sample_rate not in list(cfg.audio.output_rates):
            raise ClientError(422, f"sample_rate {params.sample_rate} Hz: choose one of "
                                   f"{list(cfg.audio.output_rates)}")
        session = LiveSession(rt.live_model, resolve(params, rt.presets, cfg),
                              params.channels, params.input_gain_db,
                              int(cfg.limits.max_frame_samples), params.sample_rate,
                              rt.live_step)
        await websocket.send_json(session.ready_message(float(cfg.streaming.hop_ms)))
        queue: asyncio.Queue = asyncio.Queue(maxsize=_MAX_QUEUED_FRAMES)
        reader = asyncio.create_task(_read_frames(websocket, session, queue, idle))
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty() and isinstance(items[-1], np.ndarray):
                    items.append(queue.get_nowait())  # behind: catch up in one step
                frames = [x for x in items if isinstance(x, np.ndarray)]
                if frames:
                    chunk = frames[0] if len(frames) == 1 else np.concatenate(frames, axis=1)
                    out = await anyio.to_thread.run_sync(session.process, chunk,
                                                         limiter=limiter)
                    if out:
                        await websocket.send_bytes(out)
                last = items[-1]
                if isinstance(last, Exception):
                    raise last
                if last is None:  # the client left
                    return
                if isinstance(last, str):  # {"type": "end"}
                    out = await anyio.to_thread.run_sync(session.flush, limiter=limiter)
                    if out:
                        await websocket.send_bytes(out)
                    await websocket.send_json(session.end_message())
                    rt.count("live_completed")
                    await websocket.close(1000)
                    return
        finally:
            reader.cancel()
    except (asyncio.TimeoutError, TimeoutError):
        await _close_with_error(websocket, ClientError(408, f"no message for {idle:g} s"))
    except ClientError as err:
        await _close_with_error(websocket, err)


async def _read_frames(websocket: WebSocket, session: LiveSession, queue: asyncio.Queue,
                       idle: float) -> None:
    """Receive while the session computes: decoded ``(2, n)`` frames, then ``"end"``, None
    (client gone) or the ClientError/TimeoutError that ends the session, into ``queue``."""
    try:
        while True:
            message = await asyncio.wait_for(websocket.receive(), idle)
            if message["type"] == "websocket.disconnect":
                await queue.put(None)
                return
            if message.get("bytes") is not None:
                await queue.put(session.decode(message["bytes"]))
            elif message.get("text") is not None:
                await queue.put(control_message(message["text"]))
                return
    except (ClientError, asyncio.TimeoutError, TimeoutError) as err:
        await queue.put(err)
    except (WebSocketDisconnect, OSError, RuntimeError):
        await queue.put(None)


async def _close_with_error(websocket: WebSocket, err: ClientError) -> None:
    await websocket.send_json({"type": "error", **err.body()})
    await websocket.close(4000 + err.status, reason=err.message[:120])


def make_app() -> Starlette:
    """The Starlette app mounted at ``/`` next to the BentoML APIs."""
    async def client_error(_: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, ClientError)
        return error_response(err.status, err.message)

    return Starlette(exception_handlers={ClientError: client_error}, routes=[
        Route("/instruments", instruments, methods=["GET"]),
        Route("/listeners/presets", presets, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/docs.json", openapi, methods=["GET"]),
        WebSocketRoute("/ws/stream", live),
    ])
