"""The service end to end: one real ``bentoml serve`` on 127.0.0.1 for the whole module.

Every hardening case must get a clear 4xx (JSON ``{"error", "status"}``, or a WebSocket error
message and close code 4000 + status) and leave the server healthy for the next request.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError, connect_ws

from model.apply import load_model, prepare_input, rebalance
from model.audio import to_int16
from serving.config import load_config
from serving.params import RebalanceParams, load_presets, parse_params, resolve

ROOT = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).parent / "bentoml"
TEST_CONFIG = """
limits: {max_upload_mb: 2, max_seconds: 12, max_live_sessions: 2, live_idle_seconds: 20,
         max_frame_samples: 8192}
models: {engine_threads: 1, api_threads: 1}
batching: {enabled: true}  # the batched path (off by default on CPU) is the one to harden
"""
GOOD = {"gains": {"Violin_1": 6, "Cello": -3}, "instruments": ["Violin_1", "Viola", "Cello"],
        "listener": {"preset": "N2"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """Base URL of a ``bentoml serve serving.service:Tutti`` with small test limits."""
    tmp = tmp_path_factory.mktemp("serving")
    conf = tmp / "serving.yaml"
    # The compiled live step builds cold (about a minute, in the background; untuned: tuning
    # takes several, and tests/test_streaming.py covers it) into this run's own cache: the live
    # tests wait for it.
    conf.write_text(TEST_CONFIG + "streaming: {compiled_live: true, compiled_tuned: false, "
                    f"compiled_cache: {tmp / 'compiled'}}}\n")
    port = _free_port()
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", TUTTI_SERVING_CONFIG=str(conf),
               TUTTI_SERVING_OVERRIDES="", BENTOML_HOME=str(tmp / "bentoml"))
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BENTOML), "serve", "serving.service:Tutti", "--host", "127.0.0.1",
             "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bentoml serve exited:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        # The compiled live step builds in the background (both cores for about half a
        # minute): let it finish before the timing-sensitive tests.
        deadline = time.monotonic() + 300
        while _stats(url)["live_step"] == "building":
            if time.monotonic() > deadline:
                pytest.fail(f"live step not built in 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def causal_model():
    return load_model(ROOT / "models" / "causal")


def _tone(seconds: float, rate: int = 44100, channels: int = 2, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = [0.2 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.size)
         for f in (440.0, 196.0)[:channels]]
    return np.stack(x).astype(np.float32)


def _file(signal: np.ndarray, rate: int = 44100, fmt: str = "WAV", subtype: str = "PCM_16"
          ) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, signal.T, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _post(url: str, data: bytes, params: dict | str | None = GOOD, path: str = "/rebalance",
          extra: dict | None = None) -> httpx.Response:
    fields = {} if params is None else {
        "params": params if isinstance(params, str) else json.dumps(params)}
    fields.update(extra or {})
    return httpx.post(url + path, files={"file": ("in.wav", data, "application/octet-stream")},
                      data=fields, timeout=120)


def _audio(resp: httpx.Response) -> tuple[np.ndarray, int]:
    assert resp.status_code == 200, resp.text
    data, rate = sf.read(io.BytesIO(resp.content), dtype="int16", always_2d=True)
    return data.T, rate


def _expect(resp: httpx.Response, status: int, words: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["status"] == status and words in body["error"], body


def test_health_documents_and_lists(server: str) -> None:
    for path in ("/livez", "/readyz", "/"):
        assert httpx.get(server + path).status_code == 200
    doc = httpx.get(f"{server}/docs.json").json()
    for path in ("/rebalance", "/rebalance/stream", "/instruments", "/listeners/presets",
                 "/ws/stream", "/livez", "/readyz"):
        assert path in doc["paths"], path
    assert "RebalanceParams" in doc["components"]["schemas"]
    inst = httpx.get(f"{server}/instruments").json()
    assert "Violin" in inst["instruments"] and "Violin_2" in inst["slots"]
    presets = httpx.get(f"{server}/listeners/presets").json()["presets"]
    assert [p["id"] for p in presets] == ["NH", "N1", "N2", "N3", "N4", "S1", "S2", "S3"]
    assert len(presets[3]["compressor"]["cr_l"]) == 6


def test_rebalance_matches_the_cli_pipeline(server: str, causal_model) -> None:
    x = _tone(1.5)
    resp = _post(server, _file(x), {**GOOD, "causal": True})
    assert resp.headers["content-type"] == "audio/flac"
    got, rate = _audio(resp)
    assert rate == 44100 and got.shape == x.shape
    cfg = load_config(overrides=[])
    request = resolve(parse_params(RebalanceParams, GOOD), load_presets(cfg), cfg)
    signal, _ = sf.read(io.BytesIO(_file(x)), dtype="float32", always_2d=True)
    expected = to_int16(rebalance(causal_model, prepare_input(signal.T, 44100), request))
    assert np.abs(got.astype(int) - expected).max() <= 1  # causal batching is exact


def test_formats_rates_and_mono(server: str) -> None:
    mono48 = _file(_tone(1.0, rate=48000, channels=1), rate=48000, fmt="FLAC")
    got, rate = _audio(_post(server, mono48, {**GOOD, "format": "wav", "sample_rate": 32000}))
    assert rate == 32000 and got.shape[0] == 2 and abs(got.shape[1] - 32000) <= 2
    ogg = _file(_tone(1.0, rate=22050), rate=22050, fmt="OGG", subtype="VORBIS")
    resp = _post(server, ogg, {**GOOD, "format": "ogg"})
    assert resp.headers["content-type"] == "audio/ogg"
    data, rate = sf.read(io.BytesIO(resp.content))
    assert rate == 44100 and abs(data.shape[0] - 44100) < 2000


def test_edge_inputs_are_accepted(server: str) -> None:
    silent, _ = _audio(_post(server, _file(np.zeros((2, 22050), np.float32))))
    assert silent.shape == (2, 22050)
    assert np.abs(silent).max() < 328  # below -40 dBFS: the network's bias through the aid
    one, _ = _audio(_post(server, _file(np.full((2, 1), 0.1, np.float32))))
    assert one.shape == (2, 1)


@pytest.mark.parametrize("name, data, params, status, words", [
    ("corrupt", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x07" * 60, GOOD, 400, "corrupt WAV"),
    ("text", b"just some text, not audio\n" * 20, GOOD, 415, "not audio"),
    ("aiff", _file(_tone(0.2), fmt="AIFF"), GOOD, 415, "AIFF"),
    ("3 channels", _file(np.zeros((3, 100), np.float32)), GOOD, 422, "3 channels"),
    ("nan", _file(np.full((2, 100), np.nan, np.float32), subtype="FLOAT"), GOOD, 422, "NaN"),
    ("inf", _file(np.full((2, 100), np.inf, np.float32), subtype="FLOAT"), GOOD, 422, "NaN"),
    ("over-long", _file(_tone(13, rate=8000, channels=1), rate=8000), GOOD, 413, "limit is 12"),
    ("instrument", _file(_tone(0.2)), {"gains": {"Tuba": 3}}, 422, "unknown instrument 'Tuba'"),
    ("gain range", _file(_tone(0.2)), {"gains": {"Cello": 30}}, 422, "outside [-20, 20]"),
    ("audiogram", _file(_tone(0.2)),
     {"gains": {"Cello": 3}, "listener": {"audiogram": {"left": [20] * 8, "right": [20] * 5}}},
     422, "8 levels"),
    ("audiogram value", _file(_tone(0.2)),
     {"gains": {"Cello": 3}, "listener": {"audiogram": {"left": [20] * 8, "right": [999] * 8}}},
     422, "outside [-10, 120]"),
    ("bad json", _file(_tone(0.2)), "{gains: Cello}", 400, "not valid JSON"),
    ("rate", _file(_tone(0.2)), {**GOOD, "sample_rate": 12345}, 422, "sample_rate"),
])
def test_bad_uploads_get_clear_4xx(server: str, name: str, data: bytes, params, status: int,
                                   words: str) -> None:
    _expect(_post(server, data, params), status, words)


def test_malformed_forms(server: str) -> None:
    _expect(httpx.post(f"{server}/rebalance", files={"params": (None, json.dumps(GOOD))}), 400,
            "no 'file' part")
    _expect(_post(server, _file(_tone(0.2)), extra={"colour": "red"}), 400, "unknown form")
    _expect(httpx.post(f"{server}/rebalance", content=b"abc",
                       headers={"content-type": "audio/wav"}), 415, "multipart/form-data")


def test_url_instead_of_file_is_refused_without_fetching(server: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/music.wav"
    try:
        resp = httpx.post(f"{server}/rebalance",  # multipart, 'file' a text part
                          files={"file": (None, url), "params": (None, json.dumps(GOOD))})
        _expect(resp, 400, "never fetched")
        resp = httpx.post(f"{server}/rebalance", content=json.dumps(url),
                          headers={"content-type": "application/json"})
        _expect(resp, 415, "multipart/form-data")
        with pytest.raises(TimeoutError):  # nobody connected to the URL's host
            listener.accept()
    finally:
        listener.close()


def _raw_post(server: str, headers: list[str], body_chunks, timeout: float = 10.0) -> bytes:
    host, port = server.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        sock.sendall(("\r\n".join(["POST /rebalance HTTP/1.1", f"Host: {host}", *headers])
                      + "\r\n\r\n").encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed while we were still sending
            pass
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            data += part
        return data
    finally:
        sock.close()


def test_oversized_upload_gets_413_before_it_is_read(server: str) -> None:
    boundary = "XyZ"
    head = [f"Content-Type: multipart/form-data; boundary={boundary}"]
    t0 = time.monotonic()
    reply = _raw_post(server, [*head, "Content-Length: 500000000"], [b"--XyZ\r\n" + b"x" * 1000])
    assert reply.startswith(b"HTTP/1.1 413") and b"exceeds the limit of 2 MB" in reply
    assert time.monotonic() - t0 < 5  # 500 MB were announced, 1 kB sent: answered at once

    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.wav\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    def chunked():  # noqa: E306 - no Content-Length: counted while read
        yield b"%x\r\n%s\r\n" % (len(part), part)
        for _ in range(60):  # 60 x 64 kB = 3.75 MB > 2 MB
            yield b"10000\r\n" + b"\x01" * 0x10000 + b"\r\n"
        yield b"0\r\n\r\n"
    reply = _raw_post(server, [*head, "Transfer-Encoding: chunked"], chunked())
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_stream_starts_early_and_matches(server: str) -> None:
    x = _file(_tone(8.0, seed=3))
    reference, _ = _audio(_post(server, x, {**GOOD, "causal": True}))
    t0 = time.monotonic()
    first_audio, body = None, b""
    with httpx.stream("POST", f"{server}/rebalance/stream", timeout=120,
                      files={"file": ("in.wav", x, "application/octet-stream")},
                      data={"params": json.dumps({**GOOD, "causal": True})}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
        for chunk in resp.iter_bytes():
            body += chunk
            if first_audio is None and len(body) > 44:
                first_audio = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first_audio is not None and first_audio < 0.6 * total, (first_audio, total)
    got, rate = sf.read(io.BytesIO(body), dtype="int16", always_2d=True)
    assert rate == 44100 and got.T.shape == reference.shape
    assert np.abs(got.T.astype(int) - reference).max() <= 1


def test_stream_client_may_leave_early(server: str) -> None:
    with httpx.stream("POST", f"{server}/rebalance/stream", timeout=120,
                      files={"file": ("in.wav", _file(_tone(10.0)), "application/octet-stream")},
                      data={"params": json.dumps({**GOOD, "causal": True})}) as resp:
        next(resp.iter_bytes())  # read the first chunk, then hang up
    assert httpx.get(f"{server}/livez").status_code == 200


def _live(server: str, params: dict, frames: list[np.ndarray], end: bool = True
          ) -> tuple[dict, np.ndarray, dict | None]:
    out: list[bytes] = []
    with httpx.Client() as client, connect_ws(f"{server}/ws/stream", client) as ws:
        ws.send_text(json.dumps(params))
        ready = ws.receive_json(timeout=30)
        for frame in frames:
            ws.send_bytes(np.ascontiguousarray(frame.T, dtype="<f4").tobytes())
        if not end:
            return ready, np.zeros((2, 0)), None
        ws.send_text(json.dumps({"type": "end"}))
        while True:
            msg = ws.receive(timeout=60)
            if hasattr(msg, "data") and isinstance(msg.data, bytes | bytearray):
                out.append(bytes(msg.data))
            else:
                last = json.loads(msg.data)
                break
    y = np.frombuffer(b"".join(out), "<f4").reshape(-1, 2).T
    return ready, y, last


def test_live_any_frame_size_matches_offline(server: str, causal_model) -> None:
    """Through the compiled live step (built before the tests: the server fixture)."""
    assert _stats(server)["live_step"] == "ready"
    x = _tone(0.5, seed=7) * 0.05
    sizes = [1, 3, 127, 128, 220, 500, 4096, 7, 1000]
    frames, start = [], 0
    while start < x.shape[1]:
        n = sizes[len(frames) % len(sizes)]
        frames.append(x[:, start : start + n])
        start += n
    ready, y, last = _live(server, {**{k: GOOD[k] for k in ("gains", "listener")},
                                    "instruments": GOOD["instruments"]}, frames)
    assert ready["type"] == "ready" and ready["latency_samples"] <= 220  # <= 5 ms
    assert last == {"type": "end", "samples_in": x.shape[1], "samples_out": x.shape[1]}
    cfg = load_config(overrides=[])
    request = resolve(parse_params(RebalanceParams, GOOD), load_presets(cfg), cfg)
    assert np.abs(y - rebalance(causal_model, x, request)).max() < 1e-4


@pytest.mark.parametrize("first, frame, status, words", [
    ({"gains": {"Tuba": 1}}, None, 422, "unknown instrument"),
    ({"gains": {"Cello": 1}, "sample_rate": 22050}, None, 422, "sample_rate 22050 Hz"),
    ("not json", None, 400, "not valid JSON"),
    (b"\x00\x00", None, 400, "first message must be the JSON params"),
    ({"gains": {"Cello": 1}}, b"\x00" * 6, 400, "not a whole number of samples"),
    ({"gains": {"Cello": 1}}, np.full(8, np.nan, "<f4").tobytes(), 400, "NaN"),
    ({"gains": {"Cello": 1}}, np.zeros(2 * 9000, "<f4").tobytes(), 413, "exceeds the limit"),
])
def test_live_faults_close_with_4xx(server: str, first, frame, status: int, words: str) -> None:
    with httpx.Client() as client, connect_ws(f"{server}/ws/stream", client) as ws:
        if isinstance(first, bytes):
            ws.send_bytes(first)
        else:
            ws.send_text(first if isinstance(first, str) else json.dumps(first))
        if frame is not None:
            assert ws.receive_json(timeout=30)["type"] == "ready"
            ws.send_bytes(frame)
        err = ws.receive_json(timeout=30)
        assert err["type"] == "error" and err["status"] == status and words in err["error"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive(timeout=10)
        assert closed.value.code == 4000 + status


def _stats(server: str) -> dict:
    return httpx.get(f"{server}/stats").json()


def _handshake(server: str, sock: socket.socket | None = None) -> bytes:
    """Send a WebSocket upgrade request for /ws/stream; the server's reply (head, maybe body)."""
    host, port = server.removeprefix("http://").split(":")
    own = sock is None
    sock = sock or socket.create_connection((host, int(port)), timeout=30)
    try:
        sock.sendall((f"GET /ws/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        reply = sock.recv(4096)
        if own and b"\r\n\r\n" in reply and not reply.rstrip().endswith(b"}"):
            reply += sock.recv(4096)
        return reply
    finally:
        if own:
            sock.close()


def _raw_ws(server: str, params: dict) -> socket.socket:
    """A bare WebSocket client socket that has sent its params (to vanish without a close)."""
    host, port = server.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    assert _handshake(server, sock).startswith(b"HTTP/1.1 101")
    for opcode, payload in ((1, json.dumps(params).encode()),
                            (2, np.zeros(2 * 1024, "<f4").tobytes())):
        header = bytes([0x80 | opcode])
        n = len(payload)
        header += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        mask = b"\x01\x02\x03\x04"
        sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    sock.recv(4096)  # the ready message (and maybe the first output)
    return sock


def test_live_disconnects_and_session_limit(server: str) -> None:
    params = {"gains": {"Cello": 2}}
    vanishing = _raw_ws(server, params)
    with httpx.Client() as c2, httpx.Client() as c3:
        with connect_ws(f"{server}/ws/stream", c2) as ws:
            ws.send_text(json.dumps(params))
            assert ws.receive_json(timeout=30)["type"] == "ready"
            ws.send_bytes(np.zeros((1024, 2), "<f4").tobytes())
            ws.receive_bytes(timeout=30)
            assert _stats(server)["live_sessions"] == 2
            with pytest.raises(WebSocketUpgradeError) as refused:
                with connect_ws(f"{server}/ws/stream", c3):
                    pass
            assert refused.value.response.status_code == 429
            reply = _handshake(server)  # the refusal's body, read raw
            assert reply.startswith(b"HTTP/1.1 429") and b"too many live sessions" in reply
            vanishing.close()  # mid-stream, no close handshake
            for _ in range(50):
                if _stats(server)["live_sessions"] == 1:
                    break
                time.sleep(0.2)
            assert _stats(server)["live_sessions"] == 1
    for _ in range(50):
        if _stats(server)["live_sessions"] == 0:
            break
        time.sleep(0.2)
    assert _stats(server)["live_sessions"] == 0
    ready, y, last = _live(server, params, [np.zeros((2, 300), np.float32)])
    assert last["samples_out"] == 300 and y.shape == (2, 300)


def test_heavy_compute_does_not_block_the_worker(server: str) -> None:
    x = _file(_tone(11.0, seed=9))
    result: dict[str, int] = {}

    def heavy() -> None:
        result["status"] = _post(server, x, GOOD, path="/rebalance/stream").status_code

    worker = threading.Thread(target=heavy)
    worker.start()
    time.sleep(1.0)
    worst = 0.0
    while worker.is_alive():
        t0 = time.monotonic()
        assert httpx.get(f"{server}/livez", timeout=10).status_code == 200
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.1)
    worker.join()
    assert result["status"] == 200 and worst < 1.0, worst


def test_still_healthy_after_everything(server: str) -> None:
    assert httpx.get(f"{server}/readyz").status_code == 200
    got, _ = _audio(_post(server, _file(_tone(0.5))))
    assert got.shape == (2, 22050)
    counters = _stats(server)["counters"]
    assert not any(key.endswith("_500") for key in counters), counters
