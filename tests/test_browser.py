"""The demo in a real browser: `serve` a model, type a prompt in headless Chromium, watch text stream in.

Needs Playwright's Python package and a Chromium on PATH (Debian: apt-get install chromium); skipped
with the reason when either is missing, and failed instead where GPTFORGE_REQUIRE_BROWSER=1 (CI sets it,
so the demo's only real-browser check cannot quietly stop running). GPTFORGE_UPDATE_SCREENSHOT=1 also
writes docs/demo.png, and GPTFORGE_DEMO_RUN=DIR serves that run instead of the tiny one (a model trained
longer reads better there).
"""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import tiny_char_config
from gptforge.train.session import train
from gptforge.trained_model import TrainedModel
from gptforge.use import app
from gptforge.use.load import load_trained

# servers on free ports: run on one pytest-xdist worker, one after another (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("servers")

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "demo.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PROMPT = "ROMEO:"
LONG_PROMPT = "JULIET:"  # the generation the test stops halfway
LONG_TOKENS = 20_000  # a char model needs many seconds for these: long enough to be stopped


def missing(reason: str) -> None:
    if os.environ.get("GPTFORGE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and GPTFORGE_REQUIRE_BROWSER=1 says this machine must run the browser test")
    pytest.skip(reason)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    missing("Chromium not found on PATH (Debian: apt-get install chromium)")


def trained_model(tmp_path: Path) -> TrainedModel:
    if run := os.environ.get("GPTFORGE_DEMO_RUN"):
        return load_trained(run=run, device="cpu")
    return load_trained(run=train(tiny_char_config(tmp_path / "run")).run_dir, device="cpu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serving(trained: TrainedModel, port: int, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Thread, list]:
    """Run `serve` as `gptforge serve` would, in a thread; the demo it builds is kept so the test can close it."""
    demos: list = []
    build_demo = app.build_demo

    def build_and_keep(*args, **kwargs):
        demos.append(build_demo(*args, **kwargs))
        return demos[-1]

    monkeypatch.setattr(app, "build_demo", build_and_keep)
    limits = app.DemoLimits(max_new_tokens=LONG_TOKENS)
    thread = threading.Thread(target=app.serve, args=(trained,), kwargs={"port": port, "limits": limits}, daemon=True)
    thread.start()
    return thread, demos


def wait_for_url(url: str, thread: threading.Thread, capsys: pytest.CaptureFixture, timeout_s: float = 90) -> None:
    """serve() prints its URL once the server is up."""
    printed, deadline = "", time.monotonic() + timeout_s
    while f"at {url}" not in printed:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"serve() did not print {url}; it printed: {printed!r}")
        time.sleep(0.2)
        printed += capsys.readouterr().out


def wait_until_quiet(page, selector: str, quiet_s: float = 1.5, timeout_s: float = 60) -> str:
    """The element's value once it has stopped changing: the stream has finished."""
    value, changed, deadline = page.input_value(selector), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() - changed < quiet_s and time.monotonic() < deadline:
        time.sleep(0.25)
        latest = page.input_value(selector)
        if latest != value:
            value, changed = latest, time.monotonic()
    return value


@pytest.mark.slow
def test_generate_in_a_browser(tmp_path, monkeypatch, capsys) -> None:
    try:
        from playwright import sync_api
    except ImportError:
        missing("Playwright is not installed (pip install playwright)")
    executable = chromium_path()
    trained = trained_model(tmp_path)
    port = free_port()
    thread, demos = start_serving(trained, port, monkeypatch)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_url(url, thread, capsys)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 860})
            page.goto(url)
            stop_idle_at_start = page.locator("#stop").is_disabled()
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#generate").click()
            page.wait_for_function(f"() => document.querySelector('#output textarea').value.length > {len(PROMPT)}",
                                   timeout=60_000)
            output = wait_until_quiet(page, "#output textarea")
            page.wait_for_selector("#stop:disabled", timeout=30_000)  # finished: nothing to stop
            page.screenshot(path=str(tmp_path / "demo.png"))
            if os.environ.get("GPTFORGE_UPDATE_SCREENSHOT") == "1":
                DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(DOCS_SCREENSHOT))

            # a long generation, stopped once it has begun: the text stops growing, far short of its length
            page.locator("#max-new-tokens input[type=number]").fill(str(LONG_TOKENS))
            page.locator("#max-new-tokens input[type=number]").press("Enter")
            assert page.input_value("#max-new-tokens input[type=number]") == str(LONG_TOKENS)
            page.locator("#prompt textarea").fill(LONG_PROMPT)
            page.locator("#generate").click()
            page.wait_for_function("() => { const text = document.querySelector('#output textarea').value; "
                                   f"return text.startsWith('{LONG_PROMPT}') && text.length > 100; }}",
                                   timeout=60_000)
            page.locator("#stop").click()
            stopped = wait_until_quiet(page, "#output textarea", quiet_s=3)
            browser.close()
    finally:
        for demo in demos:
            demo.close()
        thread.join(timeout=30)
    assert stop_idle_at_start
    assert output.startswith(PROMPT)
    assert len(output) > len(PROMPT) + 20
    assert stopped.startswith(LONG_PROMPT) and len(stopped) < LONG_TOKENS // 2, len(stopped)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert not thread.is_alive()  # serve() returned once its server was closed
