"""The demo under load, over HTTP through its API: a burst of 50 requests, out-of-range requests, a full queue.

The server binds 127.0.0.1 on a free port; every wait has a timeout. The burst runs against
`build_demo(...).launch()` in this process, so the test can count how many generations run at once and
how many model replicas exist; the full queue runs against `gptforge serve` in its own process, as
users start it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from gptforge.trained_model import TrainedModel
from gptforge.use import app
from gptforge.use.app import DemoLimits, build_demo
from gptforge.use.load import load_trained

# servers on free ports: run on one pytest-xdist worker, one after another (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("servers")

BURST = 50
NEW_TOKENS = 30
PROMPT = "ROMEO:"
RESULT_TIMEOUT_S = 120
RSS_GROWTH_LIMIT_MB = 300


@pytest.fixture(scope="module")
def trained(tiny_run: Path) -> TrainedModel:
    return load_trained(run=tiny_run, device="cpu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(trained: TrainedModel, limits: DemoLimits) -> Iterator[str]:
    demo = build_demo(trained, limits)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/status")


@contextlib.contextmanager
def peak_rss(pid: int | str = "self") -> Iterator[dict[str, float]]:
    """The resident memory before, and its highest value while the block runs (sampled every 20 ms)."""
    figures = {"before": rss_mb(pid)}
    figures["peak"] = figures["before"]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            figures["peak"] = max(figures["peak"], rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        done.set()
        sampler.join(timeout=5)


class Counters:
    """Generations running at once and model replicas made, seen from inside the server."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.running = self.peak = self.generations = self.replicas = 0
        lock = threading.Lock()
        real_stream, real_share = app.stream_text, app.share_weights

        def counted_stream(*args: Any, **kwargs: Any) -> Iterator[str]:
            with lock:
                self.running += 1
                self.generations += 1
                self.peak = max(self.peak, self.running)
            try:
                yield from real_stream(*args, **kwargs)
            finally:
                with lock:
                    self.running -= 1

        def counted_share(*args: Any, **kwargs: Any) -> Any:
            with lock:
                self.replicas += 1
            return real_share(*args, **kwargs)

        monkeypatch.setattr(app, "stream_text", counted_stream)
        monkeypatch.setattr(app, "share_weights", counted_share)


def request(client: Client, max_new_tokens: float = NEW_TOKENS, temperature: float = 0.8, top_p: float = 1.0,
            seed: int = 0) -> Any:
    return client.submit(PROMPT, max_new_tokens, temperature, 0, top_p, seed, api_name="/generate")


@pytest.mark.slow
def test_a_burst_of_50_requests_is_all_answered_within_the_limits(trained: TrainedModel,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    limits = DemoLimits(max_new_tokens=100, concurrency=2, queue_size=BURST + 14)
    counters = Counters(monkeypatch)
    with serving(trained, limits) as url:
        client = Client(url, verbose=False)
        for job in [request(client, seed=seed) for seed in range(2)]:  # warm-up: first-use allocations
            job.result(timeout=RESULT_TIMEOUT_S)
        started = time.monotonic()
        with peak_rss() as memory:
            jobs = []
            submitters = [threading.Thread(target=lambda seed=seed: jobs.append(request(Client(url, verbose=False),
                                                                                        seed=seed)))
                          for seed in range(BURST)]  # 50 callers, each with its own client and connection
            for thread in submitters:
                thread.start()
            for thread in submitters:
                thread.join(timeout=RESULT_TIMEOUT_S)
            results = [job.result(timeout=RESULT_TIMEOUT_S) for job in jobs]
        seconds = time.monotonic() - started
    assert len(results) == BURST
    assert all(text.startswith(PROMPT) and len(text) == len(PROMPT) + NEW_TOKENS for text in results)
    assert len(set(results)) > 1  # 50 seeds, not one answer copied
    assert counters.generations == BURST + 2
    assert counters.peak == limits.concurrency  # the queue ran two at a time, never more
    assert counters.replicas <= limits.concurrency - 1  # the served model plus one replica
    growth = memory["peak"] - memory["before"]
    print(f"\ndemo burst: {BURST} requests of {NEW_TOKENS} tokens answered in {seconds:.1f}s, at most "
          f"{counters.peak} at once, {counters.replicas} replica(s) made, RSS {memory['before']:.0f} MB -> peak "
          f"{memory['peak']:.0f} MB (+{growth:.0f} MB)")
    assert growth < RSS_GROWTH_LIMIT_MB


@pytest.mark.parametrize(("changes", "message"), [
    ({"max_new_tokens": 101}, "101"), ({"temperature": 5}, "5"), ({"top_p": 0}, "0"), ({"max_new_tokens": 2.5}, "2.5"),
], ids=["tokens above the cap", "temperature 5", "top-p 0", "fractional tokens"])
def test_out_of_range_requests_are_refused_with_a_message_and_not_run(
        trained: TrainedModel, monkeypatch: pytest.MonkeyPatch, changes: dict[str, float], message: str) -> None:
    counters = Counters(monkeypatch)
    with serving(trained, DemoLimits(max_new_tokens=100)) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError) as refused:
            request(client, **changes).result(timeout=RESULT_TIMEOUT_S)
        assert message in str(refused.value)
        assert counters.generations == 0
        assert request(client).result(timeout=RESULT_TIMEOUT_S).startswith(PROMPT)  # and the server still serves
    assert counters.generations == 1


def wait_for_line(process: subprocess.Popen, contains: str, timeout_s: float) -> str:
    """The first stdout line holding `contains`, read on a thread so a silent process cannot block the test."""
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            if contains in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        process.kill()
        pytest.fail(f"`gptforge serve` did not print {contains!r} within {timeout_s}s (exit {process.poll()})")
    return found[0]


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    finally:
        process.kill()


@pytest.mark.slow
def test_a_burst_larger_than_the_queue_is_refused_queue_full_not_left_hanging(tiny_run: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = subprocess.Popen(
        [sys.executable, "-m", "gptforge.cli", "serve", "--run", str(tiny_run), "--device", "cpu", "--port", str(port),
         "--concurrency", "1", "--queue-size", "2", "--max-new-tokens-cap", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        wait_for_line(process, f"at {url}", timeout_s=RESULT_TIMEOUT_S)
        client = Client(url, verbose=False)
        started = time.monotonic()
        with peak_rss(process.pid) as memory:
            jobs = [request(client, max_new_tokens=400, seed=seed) for seed in range(8)]
            outcomes: list[str] = []
            for job in jobs:
                try:
                    text = job.result(timeout=RESULT_TIMEOUT_S)
                    outcomes.append("answered" if len(text) == len(PROMPT) + 400 else f"short: {text!r}")
                except Exception as exc:  # gradio_client's QueueError has no public import path
                    outcomes.append("queue full" if "Queue is full" in str(exc) else f"{type(exc).__name__}: {exc}")
        seconds = time.monotonic() - started
    finally:
        stop(process)
    # one generating and two waiting fit; the rest are refused at once rather than queued without bound
    assert set(outcomes) == {"answered", "queue full"}, outcomes
    assert 1 <= outcomes.count("answered") <= 3 + 1, outcomes  # +1: a request may find a slot just freed
    print(f"\nfull queue: {outcomes.count('answered')} answered, {outcomes.count('queue full')} refused "
          f"'Queue is full' in {seconds:.1f}s; server RSS {memory['before']:.0f} -> peak {memory['peak']:.0f} MB")
