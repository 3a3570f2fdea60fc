"""Load test of the Tutti service on loopback: batch throughput/latency and live round trips.

Starts its own ``bentoml serve serving.service:Tutti`` on a free 127.0.0.1 port (once per
batching setting), then

1. batch: N client threads post the same stereo clip to POST /rebalance back to back for
   ``--seconds`` (at most ``--max-requests`` in all): throughput, p50/p99 latency, status
   counts, RSS of each worker process before and after;
2. live: M WebSocket sessions send 44.1 kHz stereo float32 frames of one hop (5 ms = 220
   samples) at real-time pace for ``--live-seconds``: p99 frame round trip (frame sent ->
   its processed frame back) and late frames (round trip over one hop, and over 20 ms),
   through the compiled live step when the config builds one (the server is used once it is
   ready; ``streaming.compiled_live=false`` as an override: eager).

Usage: ``python benchmarks/serving_load.py [--clients 4] [--seconds 60] [--sessions 2]
[--batching both|on|off]``. Loopback only; bounded in time and count. Client and server
share this machine's cores, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile as sf
from httpx_ws import connect_ws

ROOT = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).parent / "bentoml"
PARAMS = {"gains": {"Violin_1": 6, "Cello": -3}, "instruments": ["Violin_1", "Viola", "Cello"],
          "listener": {"preset": "N3"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``bentoml serve`` subprocess (own process group) with config overrides."""

    def __init__(self, overrides: list[str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, BENTOML_DO_NOT_TRACK="true",
                   TUTTI_SERVING_OVERRIDES=" ".join(overrides))
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(BENTOML), "serve", "serving.service:Tutti", "--host", "127.0.0.1",
                 "--port", str(self.port)], cwd=ROOT, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start; see {log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        # Live figures with the compiled live step when the config builds one.
        while self.live_step() == "building":
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"compiled live step not built in time; see {log}")
            time.sleep(1)

    def live_step(self) -> str:
        """The worker's compiled live step state (GET /stats)."""
        return str(httpx.get(f"{self.url}/stats", timeout=5).json().get("live_step"))

    def workers(self) -> dict[str, float]:
        """RSS (MB) of each BentoML worker process, by service name."""
        out = {}
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if "--service-name" in cmd:
                name = cmd[cmd.index("--service-name") + 1]
                out[name] = out.get(name, 0.0) + child.memory_info().rss / 2**20
        return out

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def clip(seconds: float, seed: int = 0) -> bytes:
    """A stereo 44.1 kHz 16-bit WAV of harmonic tones with a little noise."""
    t = np.arange(int(seconds * 44100)) / 44100
    rng = np.random.default_rng(seed)
    x = np.stack([sum(0.1 / k * np.sin(2 * np.pi * f * k * t) for k in range(1, 6))
                  + 0.003 * rng.standard_normal(t.size) for f in (440.0, 196.0)])
    buf = io.BytesIO()
    sf.write(buf, x.T, 44100, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def batch_load(url: str, data: bytes, clients: int, seconds: float, max_requests: int
               ) -> dict[str, object]:
    """``clients`` threads posting back to back; latency and status of every request."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = [0]

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while time.monotonic() < stop:
                with lock:
                    if started[0] >= max_requests:
                        return
                    started[0] += 1
                t0 = time.perf_counter()
                try:
                    status = http.post(f"{url}/rebalance", data={"params": json.dumps(PARAMS)},
                                       files={"file": ("in.wav", data)}).status_code
                except httpx.HTTPError:
                    status = 599
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    statuses[status] = statuses.get(status, 0) + 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t0
    lat = np.array(latencies)
    ok = statuses.get(200, 0)
    return {"requests": int(lat.size), "ok": ok, "elapsed_s": elapsed,
            "throughput_rps": ok / elapsed,
            "p50_s": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_s": float(np.percentile(lat, 99)) if lat.size else None,
            "statuses": statuses, "5xx": sum(v for k, v in statuses.items() if k >= 500)}


def live_session(url: str, seconds: float, hop: int, seed: int, result: dict) -> None:
    """One real-time session: frames of ``hop`` samples sent on schedule; round trips."""
    n_frames = int(seconds * 44100 / hop)
    rng = np.random.default_rng(seed)
    sent = np.full(n_frames, np.nan)
    back = np.full(n_frames, np.nan)
    with httpx.Client() as client, connect_ws(f"{url}/ws/stream", client) as ws:
        ws.send_text(json.dumps(PARAMS))
        ready = ws.receive_json(timeout=60)
        if ready.get("type") != "ready":
            raise RuntimeError(ready)
        block = int(ready["block_samples"])

        def receiver() -> None:
            # Frame k is answered once the output reaches the last whole block of its input;
            # a late server answers several frames at once.
            done, k = 0, 0
            while k < n_frames:
                try:
                    done += len(ws.receive_bytes(timeout=max(10.0, 2 * seconds))) // 8
                except Exception:  # timed out or closed: the rest count as lost
                    return
                now = time.perf_counter()
                while k < n_frames and done >= (k + 1) * hop // block * block:
                    back[k] = now
                    k += 1

        rx = threading.Thread(target=receiver)
        rx.start()
        t0 = time.perf_counter()
        for k in range(n_frames):
            delay = t0 + k * hop / 44100 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            frame = (0.01 * rng.standard_normal((hop, 2))).astype("<f4")
            sent[k] = time.perf_counter()
            ws.send_bytes(frame.tobytes())
        rx.join()
    result["rtt_ms"] = (back - sent) * 1000


def live_load(url: str, sessions: int, seconds: float, hop_ms: float) -> dict[str, object]:
    """``sessions`` concurrent real-time sessions."""
    hop = int(round(hop_ms * 44100 / 1000))
    results: list[dict] = [{} for _ in range(sessions)]
    threads = [threading.Thread(target=live_session, args=(url, seconds, hop, i, results[i]))
               for i in range(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rtt = np.concatenate([r.get("rtt_ms", np.array([])) for r in results])
    lost = int(np.isnan(rtt).sum())
    done = rtt[~np.isnan(rtt)]
    return {"sessions": sessions, "hop_samples": hop, "frames": int(rtt.size),
            "p50_rtt_ms": float(np.percentile(done, 50)) if done.size else None,
            "p99_rtt_ms": float(np.percentile(done, 99)) if done.size else None,
            "late_over_hop": int((done > hop_ms).sum()) + lost,
            "late_over_20ms": int((done > 20.0).sum()) + lost,
            "late_over_100ms": int((done > 100.0).sum()) + lost, "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent batch clients (N)")
    parser.add_argument("--seconds", type=float, default=60.0, help="batch phase length")
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--sessions", type=int, default=2, help="live sessions (M)")
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--hop-ms", type=float, default=5.0)
    parser.add_argument("--batching", choices=["both", "on", "off"], default="both")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="serving config key=value for every run")
    args = parser.parse_args()
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    data = clip(args.clip_seconds)
    report: dict[str, object] = {
        "machine": f"{os.cpu_count()} CPU, load average {os.getloadavg()[0]:.2f} at start",
        "clip_seconds": args.clip_seconds, "clients": args.clients, "overrides": args.overrides}
    modes = ["on", "off"] if args.batching == "both" else [args.batching]
    logdir = Path(tempfile.mkdtemp(prefix="tutti-load-"))
    for mode in modes:
        enabled = "true" if mode == "on" else "false"
        server = Server([*args.overrides, f"batching.enabled={enabled}"],
                        logdir / f"server-batching-{mode}.log")
        try:
            for _ in range(2):  # warm-up
                httpx.post(f"{server.url}/rebalance", data={"params": json.dumps(PARAMS)},
                           files={"file": ("in.wav", data)}, timeout=600)
            before = server.workers()
            figures = batch_load(server.url, data, args.clients, args.seconds,
                                 args.max_requests)
            figures["memory_mb_before"] = before
            figures["memory_mb_after"] = server.workers()
            report[f"batch_batching_{mode}"] = figures
            print(f"batching {mode}: {json.dumps(figures)}", flush=True)
            if mode == modes[-1] and args.sessions:
                live = live_load(server.url, args.sessions, args.live_seconds, args.hop_ms)
                live["live_step"] = server.live_step()
                report["live"] = live
                print(f"live: {json.dumps(live)}", flush=True)
        finally:
            server.stop()
    report["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
