"""The Tutti BentoML services: ``bentoml serve serving.service:Tutti``.

Two services, each its own process(es) under ``bentoml serve``:

- :class:`Tutti` (the entry point): uploads, validation, decoding/encoding, HTTP streaming,
  the live WebSocket, the GET routes; it holds the models for streaming and live sessions.
- :class:`TuttiEngine`: the whole-file model calls of POST /rebalance, with BentoML adaptive
  batching (concurrent requests are grouped into one batched model call).

Settings: ``conf/serving.yaml`` (see :mod:`serving.config`). Set ``BENTOML_DO_NOT_TRACK=true``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import anyio  # noqa: E402
import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from _bentoml_sdk import IODescriptor  # noqa: E402
from bentoml.validators import ContentType  # noqa: E402
from pydantic import Field  # noqa: E402
from starlette.datastructures import UploadFile  # noqa: E402
from starlette.responses import Response, StreamingResponse  # noqa: E402

from model.apply import prepare_input  # noqa: E402
from model.audio import SAMPLE_RATE  # noqa: E402
from serving import runtime  # noqa: E402
from serving.config import batching_on, load_config  # noqa: E402
from serving.engine import Job  # noqa: E402
from serving.http import BodyTooLarge, UploadGuard, error_response, make_app  # noqa: E402
from serving.media import MEDIA_TYPES, decode, encode, pcm16, wav_header  # noqa: E402
from serving.params import (  # noqa: E402
    ClientError,
    RebalanceParams,
    parse_params,
    resolve,
)
from serving.runtime import Runtime, load_engine  # noqa: E402

CFG = load_config()
"""Settings, read once per process at import (service options need them)."""

_PARAMS_BYTES = 1 << 20
"""Largest accepted ``params`` part (bytes)."""


class RebalanceForm(IODescriptor):
    """POST /rebalance (and /rebalance/stream) body: ``multipart/form-data`` with an audio
    ``file`` part (WAV, FLAC or OGG; any rate; mono or stereo) and a JSON ``params`` part.

    The service parses the body itself (:func:`read_form`) instead of BentoML's form reader:
    BentoML would download a URL given in place of the file, and its errors have other shapes.
    """

    file: Annotated[Path, ContentType("audio/*")] = Field(
        description="the recording: WAV, FLAC or OGG, any sample rate, mono or stereo")
    params: RebalanceParams = Field(default_factory=RebalanceParams,
                                    description="gains, listener, model and output format")

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> RebalanceForm:
        """Leave the body unread: the API reads it with :func:`read_form`."""
        return cls.model_construct(file=None, params=None)


async def read_form(ctx: bentoml.Context) -> tuple[UploadFile, RebalanceParams]:
    """The upload and its params from the request body; ClientError names any fault."""
    from starlette.requests import Request

    request: Request = ctx.request
    try:
        form = await request.form(max_files=2, max_fields=4, max_part_size=_PARAMS_BYTES)
    except BodyTooLarge:  # the guard middleware sends the 413 itself
        raise ClientError(413, "upload too large") from None
    except Exception as err:  # starlette raises HTTPException/MultiPartException variants
        raise ClientError(400, f"malformed multipart body: {getattr(err, 'detail', err)}") from None
    unknown = set(form.keys()) - {"file", "params"}
    if unknown:
        raise ClientError(400, f"unknown form field(s) {sorted(unknown)}; send 'file' and "
                               "'params'")
    upload = form.get("file")
    if upload is None:
        raise ClientError(400, "no 'file' part: upload the recording as a multipart file")
    if not isinstance(upload, UploadFile):
        raise ClientError(400, "'file' must be the uploaded audio bytes (a multipart file part); "
                               "text such as a URL is refused and never fetched")
    raw = form.get("params")
    if isinstance(raw, UploadFile):
        raw = (await raw.read(_PARAMS_BYTES + 1)).decode("utf-8", "replace")
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError as err:
        raise ClientError(400, f"'params' is not valid JSON: {err}") from None
    params = parse_params(RebalanceParams, data)
    assert isinstance(params, RebalanceParams)
    return upload, params


@bentoml.service(
    name="tutti_engine",
    workers=int(CFG.service.engine_workers),
    traffic={"timeout": int(CFG.service.timeout_s)},
)
class TuttiEngine:
    """Batched whole-file rebalancing (internal: called by :class:`Tutti` over a Unix socket)."""

    def __init__(self) -> None:
        self.engine = load_engine(CFG, int(CFG.models.engine_threads))

    @bentoml.api(batchable=batching_on(CFG),
                 max_batch_size=int(CFG.batching.max_batch_size),
                 max_latency_ms=int(CFG.batching.max_latency_ms))
    def rebalance_batch(self, jobs: list[Any]) -> list[Any]:
        """``[Job, ...]`` -> ``[(2, n) float32 hearing-aid output at 44.1 kHz, ...]``."""
        return self.engine.run(jobs)


@bentoml.service(
    name="tutti",
    workers=int(CFG.service.api_workers),
    traffic={"timeout": int(CFG.service.timeout_s),
             **({"max_concurrency": int(CFG.service.max_concurrency)}
                if CFG.service.max_concurrency else {})},
)
@bentoml.asgi_app(make_app(), path="/")
class Tutti:
    """Tutti: rebalance classical ensemble recordings for listeners with hearing loss."""

    engine = bentoml.depends(TuttiEngine)

    def __init__(self) -> None:
        self.rt = Runtime.create(CFG)
        runtime.set_current(self.rt)

    def __is_ready__(self) -> bool:
        return runtime.current() is not None

    def _refuse(self, ctx: bentoml.Context, api: str, err: ClientError) -> Response:
        self.rt.count(f"{api}_{err.status}")
        ctx.response.status_code = err.status  # BentoML copies it onto the response
        return error_response(err.status, err.message)

    async def _prepare(self, ctx: bentoml.Context) -> tuple[np.ndarray, RebalanceParams, Any]:
        upload, params = await read_form(ctx)
        try:
            request = resolve(params, self.rt.presets, CFG)
            if params.sample_rate not in list(CFG.audio.output_rates):
                raise ClientError(422, f"sample_rate {params.sample_rate} Hz: choose one of "
                                       f"{list(CFG.audio.output_rates)}")
            signal, rate = await anyio.to_thread.run_sync(lambda: decode(
                upload.file, formats=list(CFG.audio.input_formats),
                max_seconds=float(CFG.limits.max_seconds)))
        finally:
            await upload.close()  # the spooled upload (memory, or a temp file past 1 MB)
        mixture = await anyio.to_thread.run_sync(prepare_input, signal, rate,
                                                 float(CFG.audio.lufs))
        return mixture, params, request

    async def _run_engine(self, job: Job) -> np.ndarray:
        """The engine's output for one job; retried on a dropped pooled connection (BentoML's
        internal client keeps idle Unix-socket connections longer than the engine's server
        does, bentoml/BentoML#4971: a reused one can be closed under it). Pure compute, so a
        retry is safe."""
        import aiohttp

        for attempt in range(3):
            try:
                [out] = await self.engine.to_async.rebalance_batch([job])
                return out
            except aiohttp.ClientConnectionError:
                self.rt.count("engine_reconnects")
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @bentoml.api(route="/rebalance", input_spec=RebalanceForm)
    async def rebalance(self, ctx: bentoml.Context, file: Path | None = None,
                        params: RebalanceParams | None = None
                        ) -> Annotated[Path, ContentType("audio/*")]:
        """Rebalance an uploaded recording for a listener; returns the processed file.

        Multipart fields: ``file`` (WAV/FLAC/OGG) and ``params`` (JSON: ``gains`` by
        instrument name in dB, ``instruments``, ``listener`` as ``{"preset": id}``,
        ``{"audiogram": {"left": [8], "right": [8]}}`` or ``{"compressor": {...}}``,
        ``causal``, ``format`` flac|wav|ogg, ``sample_rate``). Errors: JSON
        ``{"error", "status"}`` with 400, 413, 415 or 422.
        """
        t0 = time.perf_counter()
        try:
            mixture, params, request = await self._prepare(ctx)
        except ClientError as err:
            return self._refuse(ctx, "rebalance", err)
        out = await self._run_engine(Job(mixture, request, params.causal))
        body = await anyio.to_thread.run_sync(encode, out, SAMPLE_RATE, params.sample_rate,
                                              params.format)
        self.rt.count("rebalance_200")
        return Response(body, media_type=MEDIA_TYPES[params.format], headers={
            "Content-Disposition": f'attachment; filename="rebalanced.{params.format}"',
            "X-Tutti-Seconds": f"{mixture.shape[1] / SAMPLE_RATE:.3f}",
            "X-Tutti-Processing-Seconds": f"{time.perf_counter() - t0:.3f}",
        })

    @bentoml.api(route="/rebalance/stream", input_spec=RebalanceForm)
    async def rebalance_stream(self, ctx: bentoml.Context, file: Path | None = None,
                               params: RebalanceParams | None = None
                               ) -> Annotated[Path, ContentType("audio/wav")]:
        """Like /rebalance, but the answer is a 16-bit 44.1 kHz WAV streamed while it is
        computed (chunked transfer): the first samples leave after the first window (20 s of
        input non-causal, 1 s causal) instead of after the whole file. The output equals the
        CLI's (``tutti rebalance``); ``format`` is ignored and ``sample_rate`` must be 44100.
        """
        try:
            mixture, params, request = await self._prepare(ctx)
            if params.sample_rate != SAMPLE_RATE:
                raise ClientError(422, "/rebalance/stream always sends 16-bit WAV at 44100 Hz; "
                                       "leave sample_rate out")
        except ClientError as err:
            return self._refuse(ctx, "stream", err)
        _, limiter = self.rt.limiters()
        pieces = self.rt.engine.stream(mixture, request, params.causal,
                                       float(CFG.streaming.http_chunk_seconds))
        rt = self.rt

        async def body():
            yield wav_header(mixture.shape[1], SAMPLE_RATE)
            while True:
                piece = await anyio.to_thread.run_sync(next, pieces, None, limiter=limiter)
                if piece is None:
                    break
                yield pcm16(piece)
            rt.count("stream_200")

        return StreamingResponse(body(), media_type="audio/wav", headers={
            "Content-Disposition": 'attachment; filename="rebalanced.wav"',
            "X-Tutti-Seconds": f"{mixture.shape[1] / SAMPLE_RATE:.3f}"})


Tutti.add_asgi_middleware(UploadGuard, max_bytes=int(float(CFG.limits.max_upload_mb) * 2**20))
