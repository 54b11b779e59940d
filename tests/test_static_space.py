"""`gptforge export --format static-space`: the folder, and the page in a real browser (headless Chromium
driven by Playwright, the folder served over local HTTP): its tokenizers encode as gptforge's do and its
greedy continuation is `gptforge sample --temperature 0`'s, for a char and a GPT-2-tokenizer model.

The browser part skips saying why where Playwright or Chromium is missing, and fails instead under
GPTFORGE_REQUIRE_BROWSER=1 (CI). GPTFORGE_UPDATE_SCREENSHOT=1 writes docs/static-space.png, and
GPTFORGE_DEMO_RUN=DIR shows that run there (a model trained longer reads better).
"""

import functools
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_main, tiny_char_config
from gptforge.train.session import train
from gptforge.use.load import load_trained
from test_browser import CHROMIUM_ARGS, chromium_path, missing
from test_space import front_matter

pytest.importorskip("onnxscript", reason="the static Space holds an ONNX export: needs the onnx extra")

from gptforge.interop.static_space import export_static_space  # noqa: E402

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "static-space.png"
PROMPTS = {"char": "ROMEO:\nWhat say you", "gpt2": "To be, or not \u2014 na\u00efve caf\u00e9 \U0001f600 it's  x\n\n"}
TRICKY = "Hello  world!\n\n\tIt's 2026's 3.14 \u2014 na\u00efve caf\u00e9 \U0001f600\U0001f600 don't  \u00a0end "


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One-step runs: nearly untrained, so greedy text wanders over many tokens instead of repeating one."""
    out = tmp_path_factory.mktemp("static-runs")
    return {name: train(tiny_char_config(out / name, max_steps=1, tokenizer=name)).run_dir for name in ("char", "gpt2")}


def test_the_folder_is_a_static_space_with_the_page_and_onnxruntime_web(tiny_run, tmp_path) -> None:
    trained = load_trained(run=tiny_run, device="cpu")
    out = export_static_space(trained, tmp_path / "static", int8=True)
    meta = front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert meta["sdk"] == "static" and meta["app_file"] == "index.html"
    names = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert {"index.html", "app.js", "tokenizers.js", "sampling.js", "generate.js", "style.css", "model.onnx",
            "model.int8.onnx", "onnx_config.json", "tokenizer.json", "facts.json", "vendor/ort.wasm.min.mjs",
            "vendor/ort-wasm-simd-threaded.mjs", "vendor/ort-wasm-simd-threaded.wasm"} <= names
    assert json.loads((out / "onnx_config.json").read_text())["model_files"] == ["model.onnx", "model.int8.onnx"]
    page = "\n".join((out / name).read_text() for name in ("index.html", "app.js"))
    assert "http://" not in page and "https://" not in page  # nothing from a CDN: the page is self-contained
    assert (out / "vendor" / "ort-wasm-simd-threaded.wasm").read_bytes()[:4] == b"\0asm"


def test_cli_export_static_space(tiny_run, tmp_path, capsys) -> None:
    out = tmp_path / "static"
    status, stdout, _ = run_main(["export", "--run", str(tiny_run), "--format", "static-space", "--out", str(out)],
                                 capsys)
    assert status == 0 and "static Space" in stdout
    assert json.loads((out / "onnx_config.json").read_text())["model_files"] == ["model.onnx"]


class StaticFiles(http.server.SimpleHTTPRequestHandler):
    """What a static Space's server does: plain files, with the types ES modules and WebAssembly need."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def log_message(self, *args) -> None:  # the test's output stays readable
        pass


@pytest.fixture
def serve_folder() -> Iterator:
    servers = []

    def serve(folder: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(StaticFiles, directory=folder))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        missing("Playwright is not installed (pip install playwright)")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("() => ['ready', 'failed'].includes(document.body.dataset.state)", timeout=120_000)
    assert page.evaluate("document.body.dataset.state") == "ready", (page.text_content("#status"), errors)
    return page


def generate_in_page(page, prompt: str, max_new_tokens: int, temperature: float = 0.0, seed: int = -1) -> str:
    page.evaluate("""([tokens, temperature, seed]) => {
        const set = (id, value) => { const el = document.getElementById(id); el.value = value;
                                     el.dispatchEvent(new Event('input')); };
        set('max-new-tokens', tokens); set('temperature', temperature); set('seed', seed);
    }""", [max_new_tokens, temperature, seed])
    page.fill("#prompt", prompt)
    page.click("#generate")
    page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=120_000)
    return page.text_content("#output")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_the_page_continues_greedily_as_gptforge_sample_does(name, runs, tmp_path, serve_folder, browser,
                                                            capsys) -> None:
    run = runs[name]
    trained = load_trained(run=run, device="cpu")
    new_tokens = trained.config.model.block_size + 40  # the context window slides in both
    status, expected, _ = run_main(["sample", "--run", str(run), "--prompt", PROMPTS[name], "--temperature", "0",
                                    "--max-new-tokens", str(new_tokens), "--device", "cpu"], capsys)
    assert status == 0
    page = open_page(browser, serve_folder(export_static_space(trained, tmp_path / "static")))
    assert generate_in_page(page, PROMPTS[name], new_tokens) == expected.removesuffix("\n")
    assert int(page.locator("#status").get_attribute("data-tokens")) == new_tokens
    if name == "gpt2":  # the page's BPE against tiktoken's, on text that exercises every pre-tokenizer rule
        encoded = page.evaluate("async (text) => (await import('./tokenizers.js')).GPT2Tokenizer.prototype"
                                ".encode.call(new (await import('./tokenizers.js')).GPT2Tokenizer("
                                "await (await fetch('gpt2.tiktoken')).text()), text)", TRICKY)
        assert encoded == trained.tokenizer.encode(TRICKY)


@pytest.mark.slow
def test_a_seed_repeats_a_sample_and_the_facts_are_shown(runs, tmp_path, serve_folder, browser) -> None:
    run = Path(os.environ.get("GPTFORGE_DEMO_RUN") or runs["char"])
    trained = load_trained(run=run, device="cpu")
    page = open_page(browser, serve_folder(export_static_space(trained, tmp_path / "static", int8=True)))
    first = generate_in_page(page, "ROMEO:", 60, temperature=0.8, seed=7)
    assert generate_in_page(page, "ROMEO:", 60, temperature=0.8, seed=7) == first
    assert generate_in_page(page, "ROMEO:", 60, temperature=0.8, seed=8) != first
    facts = page.text_content("#facts")
    assert f"{trained.facts.parameters:,}" in facts and trained.facts.preset in facts
    page.select_option("#model-file", "model.int8.onnx")
    page.wait_for_function("() => document.body.dataset.state === 'ready'", timeout=120_000)
    assert generate_in_page(page, "ROMEO:", 20).startswith("ROMEO:")
    if os.environ.get("GPTFORGE_UPDATE_SCREENSHOT") == "1":
        page.select_option("#model-file", "model.onnx")
        page.wait_for_function("() => document.body.dataset.state === 'ready'", timeout=120_000)
        generate_in_page(page, "ROMEO:", 300, temperature=0.8, seed=1)
        page.screenshot(path=str(DOCS_SCREENSHOT))
