"""The OpenAPI document served at ``/docs.json`` (and shown by the Swagger UI at ``/``).

BentoML documents its POST APIs and health routes; the routes of the mounted Starlette app
(GET /instruments, /listeners/presets, /stats and the WebSocket) are added here.
"""

from __future__ import annotations

from typing import Any

from serving.params import Audiogram, Compressor, ListenerSpec, LiveParams, RebalanceParams


def _json(description: str, example: Any) -> dict[str, Any]:
    return {"200": {"description": description,
                    "content": {"application/json": {"example": example}}}}


_ERROR = {"description": "refused: JSON {\"error\": message, \"status\": code}",
          "content": {"application/json": {"example": {"error": "...", "status": 422}}}}

EXTRA_PATHS: dict[str, Any] = {
    "/instruments": {"get": {
        "tags": ["Service APIs"], "operationId": "tutti__instruments",
        "description": "The instrument vocabulary (CAD2) and the model's 12 slots.",
        "responses": _json("instruments", {"instruments": ["Bassoon", "Cello", "..."],
                                           "slots": ["Bassoon", "Cello", "...", "Violin_2"]}),
    }},
    "/listeners/presets": {"get": {
        "tags": ["Service APIs"], "operationId": "tutti__presets",
        "description": "Listener presets (normal hearing, Bisgaard N1-N4, S1-S3): audiograms "
                       "(dB HL at 250-8000 Hz) and CAMFIT-prescribed hearing-aid settings.",
        "responses": _json("presets", {"presets": [{"id": "N3", "name": "...",
                                                    "audiogram": {}, "compressor": {}}]}),
    }},
    "/stats": {"get": {
        "tags": ["Infrastructure"], "operationId": "tutti__stats",
        "description": "This worker's open live sessions, the state of its compiled live "
                       "step (off, building, ready or failed: ...) and request counters.",
        "responses": _json("stats", {"live_sessions": 0, "max_live_sessions": 8,
                                     "live_step": "ready",
                                     "counters": {"rebalance_200": 3}}),
    }},
    "/ws/stream": {"get": {
        "tags": ["Service APIs"], "operationId": "tutti__live",
        "description": (
            "WebSocket (upgrade) for live causal rebalancing. First message: JSON LiveParams; "
            "reply {type: ready, latency_samples, ...}. Then binary float32 little-endian "
            "frames, channels interleaved, any number of samples; replies are binary stereo "
            "float32 frames. {\"type\": \"end\"} flushes and closes. Errors: a text message "
            "{type: error, status, error} and close code 4000 + status. More sessions than "
            "limits.max_live_sessions: HTTP 429 at the handshake."),
        "responses": {"101": {"description": "switching protocols"}, "429": _ERROR},
    }},
}


def document() -> dict[str, Any]:
    """BentoML's OpenAPI document of :class:`serving.service.Tutti` with the extra routes."""
    from serving.service import Tutti

    spec = Tutti.openapi_spec.asdict()
    spec["info"]["title"] = "Tutti"
    spec["info"]["description"] = (
        "Rebalances recordings of classical ensembles for listeners with hearing loss and "
        "returns them through the listener's hearing aid (CAD2 task 2).")
    spec.setdefault("paths", {}).update(EXTRA_PATHS)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (RebalanceParams, LiveParams, ListenerSpec, Audiogram, Compressor):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    for path in ("/rebalance", "/rebalance/stream"):
        post = spec["paths"].get(path, {}).get("post")
        if post is not None:
            post["responses"] = {k: v for k, v in post["responses"].items() if k in (200, "200")}
            for code in ("400", "413", "415", "422"):
                post["responses"][code] = _ERROR
    return spec
