"""The demo takes text only, so Gradio's upload endpoint (which every Gradio app has) must refuse files of
any size rather than keep them in the temporary folder: `gptforge serve` and an exported Space's app.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gptforge.interop.space import export_space
from gptforge.use.load import load_trained

START_TIMEOUT_S = 120
UPLOAD_SIZES = [1, 64 * 1024, 8 * 1024 * 1024]  # bytes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a CI proxy must not see localhost


def wait_until_serving(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the demo exited with status {process.returncode}"
        try:
            with DIRECT.open(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    pytest.fail(f"the demo did not answer at {url} within {START_TIMEOUT_S}s")


def upload(url: str, size: int) -> int | str:
    """POST a file of `size` bytes to Gradio's upload endpoint: the HTTP status, or "closed" when the server
    answered and closed the connection before the whole file was sent (it refused it at the first chunk)."""
    boundary = "gptforge-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + b"x" * size + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with DIRECT.open(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (ConnectionResetError, BrokenPipeError)):
            return "closed"
        raise


@pytest.mark.parametrize("server", ["serve", "space app.py"])
def test_uploads_of_any_size_are_refused_and_nothing_is_kept(server: str, tiny_run: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    uploads = tmp_path / "gradio-temp"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads), "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    if server == "serve":
        command, folder = [sys.executable, "-m", "gptforge", "serve", "--run", str(tiny_run), "--device", "cpu",
                           "--port", str(port)], None
    else:
        folder = export_space(load_trained(run=tiny_run, device="cpu"), tmp_path / "space")
        command = [sys.executable, "app.py"]
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(url, process)
        answers = [upload(url, size) for size in UPLOAD_SIZES]
        assert answers[0] == 413 and all(answer in (413, "closed") for answer in answers), answers
    finally:
        process.terminate()
        process.wait(timeout=30)
    kept = [p for p in uploads.rglob("*") if p.is_file() and p.stat().st_size > 0] if uploads.exists() else []
    assert kept == []
