"""The static Space's page in headless Chromium beside `gptforge sample`, on the same CPU: first-token
latency (the prompt's call included) and tokens per second after it, greedy, median of `--repeats` after
one uncounted warm-up generation each (the model loaded once).

    python benchmarks/bench_browser.py --run runs/char --new-tokens 200 --repeats 3
    python benchmarks/bench_browser.py --preset gpt2 --new-tokens 100 --repeats 3

`--run` measures a trained run (the CPU recipe's model); `--preset` an untrained model of that shape with
GPT-2's tokenizer (speed does not depend on the weights' values, and no download is needed). Each model is
exported once as a static Space with fp32 and int8 weights; the page runs onnxruntime-web's WebAssembly
build on one thread (a static Space sends no cross-origin isolation headers), gptforge runs torch on
every core. The machine's load average is printed before and after: on a shared machine it says how far
the figures can be trusted.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from gptforge.config import build_config
from gptforge.generate import SamplingSettings, generate_ids
from gptforge.interop.onnx_run import OnnxModel
from gptforge.interop.static_space import export_static_space
from gptforge.model import GPT
from gptforge.tokenizer import GPT2Tokenizer
from gptforge.trained_model import ModelFacts, TrainedModel
from gptforge.use.load import load_trained

PROMPT = "ROMEO:"
LOGIT_TEXT = "ROMEO:\nWhat light through yonder window breaks?"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


class StaticFiles(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args) -> None:
        pass


def model_to_measure(args: argparse.Namespace) -> TrainedModel:
    if args.run:
        return load_trained(run=args.run, device="cpu")
    config = build_config(args.preset, flags={"device": "cpu"})
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    facts = ModelFacts(preset=args.preset, parameters=sum(p.numel() for p in model.parameters()))
    return TrainedModel(model=model, tokenizer=GPT2Tokenizer(), config=config, source=Path(args.preset), facts=facts)


def time_gptforge(trained: TrainedModel, new_tokens: int) -> tuple[float, float]:
    """First-token latency (ms) and tokens/s after it, as `gptforge sample --temperature 0` generates."""
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=0.0, stop_at_eot=False)
    started = time.perf_counter()
    first = None
    for _ in generate_ids(trained.model, trained.tokenizer.encode(PROMPT), settings, trained.tokenizer.vocab_size):
        first = first or time.perf_counter()
    done = time.perf_counter()
    return (first - started) * 1000, (new_tokens - 1) / (done - first)


def load_page(page, url: str, model_file: str) -> None:
    page.goto(f"{url}?model={model_file}")
    page.wait_for_function("() => document.body.dataset.state === 'ready'", timeout=600_000)


def time_page(page, new_tokens: int) -> tuple[float, float]:
    page.evaluate("""(tokens) => {
        for (const [id, value] of [['max-new-tokens', tokens], ['temperature', 0], ['seed', 1]]) {
            const el = document.getElementById(id); el.value = value; el.dispatchEvent(new Event('input'));
        }
    }""", new_tokens)
    page.fill("#prompt", PROMPT)
    page.click("#generate")
    page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=600_000)
    stats = page.locator("#status")
    assert int(stats.get_attribute("data-tokens")) == new_tokens, page.text_content("#status")
    return float(stats.get_attribute("data-first-token-ms")), float(stats.get_attribute("data-tokens-per-second"))


def int8_logit_difference(folder: Path, ids: list[int]) -> tuple[float, float]:
    """The largest |int8 - fp32| logit over the prompt's positions, and fp32's logit spread for scale."""
    runs = []
    for model_file in ("model.onnx", "model.int8.onnx"):
        model = OnnxModel(folder, model_file)
        runs.append(model.run(np.array([ids]), model.empty_past())[0])
    return float(np.abs(runs[1] - runs[0]).max()), float(runs[0].max() - runs[0].min())


def median_pair(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run (the CPU recipe's model)")
    source.add_argument("--preset", help="an untrained model of this preset's shape, GPT-2 tokenizer (e.g. gpt2)")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright import sync_api

    print(f"load average before: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {torch.get_num_threads()} "
          "threads")
    trained = model_to_measure(args)
    time_gptforge(trained, args.new_tokens)  # warm-up, not counted (as for the page below)
    rows = {"gptforge sample (torch, fp32)": median_pair([time_gptforge(trained, args.new_tokens)
                                                          for _ in range(args.repeats)])}
    with tempfile.TemporaryDirectory() as work:
        folder = export_static_space(trained, Path(work) / "static", int8=True)
        sizes = {name: (folder / name).stat().st_size / 2**20 for name in ("model.onnx", "model.int8.onnx")}
        ids = trained.tokenizer.encode(LOGIT_TEXT)[-trained.model.config.block_size:]
        difference, spread = int8_logit_difference(folder, ids)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(StaticFiles, directory=folder))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            for model_file, label in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
                load_page(page, url, model_file)
                time_page(page, args.new_tokens)  # warm-up, not counted
                rows[f"page, onnxruntime-web ({label}, {sizes[model_file]:.1f} MiB)"] = median_pair(
                    [time_page(page, args.new_tokens) for _ in range(args.repeats)])
            browser.close()
        server.shutdown()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"\n{trained.facts.preset} ({trained.facts.parameters:,} parameters), prompt {PROMPT!r}, "
          f"{args.new_tokens} greedy tokens, median of {args.repeats}\n")
    print("| runner | first token (ms) | tokens/s after it |\n|---|---|---|")
    for label, (first_ms, rate) in rows.items():
        print(f"| {label} | {first_ms:.1f} | {rate:.1f} |")
    print(f"\nint8 weights: {sizes['model.int8.onnx']:.1f} MiB vs {sizes['model.onnx']:.1f} MiB; largest logit "
          f"difference from fp32 over {LOGIT_TEXT!r}: {difference:.4f} (fp32 logits span {spread:.2f})")


if __name__ == "__main__":
    main()
