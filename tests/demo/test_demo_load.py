"""Load test of the demo server, started by the real CLI in its own process on 127.0.0.1.

20 clients ask for a face analysis at the same moment through Gradio's HTTP API. The server runs analyses one at
a time with at most ``MAX_QUEUE`` waiting: every request must either complete with a correct analysis or be
refused at once with a clear "queue full" answer (HTTP 503), the server's memory must stay bounded, and it must
serve normally afterwards. Oversized uploads are refused (HTTP 413).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from demo_photos import BIDEN, OBAMAS

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

N_CLIENTS = 20
MAX_QUEUE = 4
MAX_UPLOAD_MB = 1
# Memory bound on the server's RSS growth during the burst, over its RSS after a warm-up analysis (models loaded).
# What the burst may legitimately add: one analysis at a time (concurrency 1): a decoded photo and its crops, a few
# MB; at most MAX_QUEUE waiting requests, each a small JSON body (the photo is an already uploaded file on disk);
# per-session state of <= 20 sessions x 1 reference (crops + mesh, ~1.5 MB each, ~30 MB) and Gradio's result
# files on disk. 150 MB leaves room for allocator noise and thread stacks while catching a per-request leak of
# the size of a photo (20 x several MB) or unbounded queuing.
RSS_GROWTH_BOUND_MB = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_DISABLE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "hifi_portrait.cli.main",
        "--quiet",
        "demo",
        "--port",
        str(port),
        "--max-queue",
        str(MAX_QUEUE),
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the demo did not answer within 90 s")
        time.sleep(0.3)
    yield url, proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def upload(url: str, path) -> str:
    with open(path, "rb") as fh:
        r = httpx.post(url + "/gradio_api/upload", files={"files": (path.name, fh, "image/jpeg")}, timeout=30)
    r.raise_for_status()
    return r.json()[0]


def call_analyze(url: str, server_path: str, timeout: float = 120.0) -> tuple[str, object]:
    """One analysis through the HTTP API: ("complete", outputs), ("queue_full", message) or ("error", text)."""
    body = {"data": [[{"path": server_path, "meta": {"_type": "gradio.FileData"}}]]}
    r = httpx.post(url + "/gradio_api/call/analyze", json=body, timeout=30)
    if r.status_code == 503:
        return "queue_full", r.json().get("detail", r.text)
    if r.status_code != 200:
        return "error", f"HTTP {r.status_code}: {r.text}"
    event_id = r.json()["event_id"]
    event = None
    with httpx.stream("GET", f"{url}/gradio_api/call/analyze/{event_id}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = line.split(":", 1)[1].strip()
                return event, json.loads(data) if event == "complete" else data
    return "error", "stream ended without a result"


def table_rows(outputs) -> list[list]:
    """The analysis table among the endpoint's outputs (session state shown as null, gallery, table, warnings)."""
    table = outputs[2]
    return table["data"] if isinstance(table, dict) else table


class RssSampler(threading.Thread):
    def __init__(self, pid: int, period: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process, self.period = psutil.Process(pid), period
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.period)

    def stop(self) -> int:
        self._halt.set()
        self.join(timeout=5)
        return self.peak


@pytest.mark.slow
def test_burst_of_analyses_completes_or_is_refused_with_bounded_memory(server):
    url, proc = server
    photos = [*OBAMAS, BIDEN]
    server_paths = [upload(url, p) for p in photos]
    status, outputs = call_analyze(url, server_paths[0])  # warm-up: models load
    assert status == "complete", outputs
    baseline = psutil.Process(proc.pid).memory_info().rss

    sampler = RssSampler(proc.pid)
    sampler.start()
    barrier = threading.Barrier(N_CLIENTS)
    results: list[tuple[int, str, object]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            outcome = call_analyze(url, server_paths[i % len(photos)])
        except httpx.HTTPError as exc:
            outcome = ("error", repr(exc))
        with lock:
            results.append((i, *outcome))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    elapsed = time.monotonic() - t0
    peak = sampler.stop()

    assert len(results) == N_CLIENTS, "a client hung"
    errors = [r for r in results if r[1] == "error"]
    assert not errors, errors
    done = [r for r in results if r[1] == "complete"]
    full = [r for r in results if r[1] == "queue_full"]
    assert all("Queue is full" in str(message) for _, _, message in full)
    # with 20 simultaneous arrivals, analyses one at a time and 4 waiting places, both answers must occur
    assert done and full, (len(done), len(full))
    assert len(done) >= MAX_QUEUE
    for i, _, outputs in done:  # each completed request analysed its own photo
        rows = table_rows(outputs)
        assert [row[0] for row in rows] == [photos[i % len(photos)].name] and rows[0][1] == "ok"
    growth_mb = (peak - baseline) / 2**20
    print(
        f"\n{len(done)} completed, {len(full)} queue-full in {elapsed:.1f} s; server RSS {baseline / 2**20:.0f} MB "
        f"after warm-up, peak {peak / 2**20:.0f} MB (+{growth_mb:.0f} MB)"
    )
    assert growth_mb < RSS_GROWTH_BOUND_MB

    # the server recovers: a request after the burst is served normally
    status, outputs = call_analyze(url, server_paths[1])
    assert status == "complete" and table_rows(outputs)[0][0] == photos[1].name


def test_oversized_upload_is_refused(server, tmp_path):
    url, proc = server
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + os.urandom(int((MAX_UPLOAD_MB + 0.5) * 2**20)))
    with open(big, "rb") as fh:
        r = httpx.post(url + "/gradio_api/upload", files={"files": ("big.jpg", fh, "image/jpeg")}, timeout=30)
    assert r.status_code == 413, r.text
    assert proc.poll() is None
