"""The web demo: a Gradio page that streams samples from a trained model.

Imported only by ``gptforge serve`` and exported Spaces, so gradio stays an optional dependency.
Every input is checked again on the server, because HTTP API callers never see the sliders' ranges.
"""

from __future__ import annotations

import contextlib
import copy
import math
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gptforge.errors import UserError
from gptforge.generate import SamplingSettings, stream_text
from gptforge.model import GPT
from gptforge.tokenizer import Tokenizer
from gptforge.trained_model import TrainedModel, autocast_for, best_loss_label

try:
    import gradio as gr
except ImportError:
    raise UserError("the web demo needs Gradio: pip install 'gptforge[app]'") from None

# Prompts offered as examples when the model's tokenizer can encode them (a char model only knows its corpus).
EXAMPLE_PROMPTS = ("ROMEO:", "First Citizen:", "JULIET:\nO Romeo, Romeo!", "To be, or not to be")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class DemoLimits:
    """What one public demo may spend per request; enforced on the server, not only in the page."""

    max_new_tokens: int = 1000
    concurrency: int = 2  # generations at once
    queue_size: int = 64  # requests that may wait
    max_prompt_chars: int = 4000

    def validate(self) -> None:
        for name in ("max_new_tokens", "concurrency", "queue_size", "max_prompt_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"the demo limit {name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = DemoLimits()  # frozen, so one shared default is safe


class ReplicaPool:
    """Models that share one set of weights, one per generation running at the same time.

    Generation keeps its KV cache on the model's attention modules, so two requests on one model
    would overwrite each other's cache. Replicas cost only their own modules, not another copy of
    the weights. The pool never blocks: a request that finds it empty makes a new replica.
    """

    def __init__(self, model: GPT) -> None:
        self._model = model
        self._free = [model]
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[GPT]:
        with self._lock:
            model = self._free.pop() if self._free else None
        if model is None:
            model = share_weights(self._model)
        try:
            yield model
        finally:
            with self._lock:
                self._free.append(model)


def share_weights(model: GPT) -> GPT:
    """A new GPT whose parameters are `model`'s tensors (built on the meta device, so nothing is copied)."""
    with torch.device("meta"):
        replica = GPT(copy.deepcopy(model.config))
    replica.load_state_dict(model.state_dict(), assign=True)
    return replica.eval()


def refused(message: str) -> gr.Error:
    """The error a refused request raises: the visitor reads `message`; the server console gets one line
    instead of Gradio's traceback (a bad request is the caller's mistake, not the server's)."""
    print(f"demo: refused a request: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return gr.Error(message, print_exception=False)


def _number(value: Any, name: str) -> float:
    """A finite number from whatever an API caller sent."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise refused(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise refused(f"{name} must be a finite number, got {value!r}")
    return number


def _whole(value: Any, name: str) -> int:
    number = _number(value, name)
    if number != int(number):
        raise refused(f"{name} must be a whole number, got {value!r}")
    return int(number)


def check_prompt(prompt: Any, tokenizer: Tokenizer, limits: DemoLimits) -> str:
    """The prompt as text the tokenizer can encode, within the length limit."""
    prompt = "" if prompt is None else prompt
    if not isinstance(prompt, str):
        raise refused(f"the prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > limits.max_prompt_chars:
        raise refused(f"the prompt has {len(prompt):,} characters; this demo takes at most "
                       f"{limits.max_prompt_chars:,}")
    try:
        tokenizer.encode(prompt)
    except UserError as exc:
        raise refused(str(exc)) from None
    return prompt


def check_settings(limits: DemoLimits, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any,
                   seed: Any) -> SamplingSettings:
    """Sampling settings from raw request values; anything out of range is refused, not clamped."""
    tokens = _whole(max_new_tokens, "max new tokens")
    if not 1 <= tokens <= limits.max_new_tokens:
        raise refused(f"max new tokens must be between 1 and {limits.max_new_tokens:,}, got {tokens:,}")
    temp = _number(temperature, "temperature")
    if not 0.0 <= temp <= 2.0:
        raise refused(f"temperature must be between 0 and 2, got {temp:g}")
    k = _whole(top_k, "top-k")
    if k < 0:
        raise refused(f"top-k must be 0 (off) or more, got {k}")
    p = _number(top_p, "top-p")
    if not 0.0 < p <= 1.0:
        raise refused(f"top-p must be above 0 and at most 1, got {p:g}")
    return SamplingSettings(max_new_tokens=tokens, temperature=temp, top_k=k or None,
                            top_p=p if p < 1.0 else None, seed=_seed(seed), stop_at_eot=True)


def _seed(value: Any) -> int | None:
    """Blank or negative means a fresh random sample each time."""
    if value is None or value == "":
        return None
    seed = _whole(value, "seed")
    if seed > MAX_SEED:
        raise refused(f"seed must be at most {MAX_SEED}, got {seed}")
    return seed if seed >= 0 else None


def _next_piece(pieces: Iterator[str], model: GPT) -> str | None:
    """One step of generation under the model's autocast.

    Autocast is entered per step rather than around the whole stream: Gradio may resume a generator
    on a different worker thread, and autocast state belongs to a thread.
    """
    with autocast_for(model) or contextlib.nullcontext():
        return next(pieces, None)


def generate_stream(trained: TrainedModel, limits: DemoLimits, prompt: Any, max_new_tokens: Any, temperature: Any,
                    top_k: Any, top_p: Any, seed: Any, replicas: ReplicaPool | None = None) -> Iterator[str]:
    """The page's Generate handler: the prompt and its continuation so far, growing as tokens arrive."""
    prompt = check_prompt(prompt, trained.tokenizer, limits)
    settings = check_settings(limits, max_new_tokens, temperature, top_k, top_p, seed)
    text = prompt
    with (replicas or ReplicaPool(trained.model)).borrow() as model:
        pieces = stream_text(model, trained.tokenizer, prompt, settings)
        while (piece := _next_piece(pieces, model)) is not None:
            text += piece
            yield text


def _loss(value: float | None) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def facts_markdown(trained: TrainedModel) -> str:
    """The facts panel: what the visitor is talking to, and how much it was trained."""
    facts = trained.facts
    rows = [
        ("preset", f"`{facts.preset}`"),
        ("parameters", f"{facts.parameters or 0:,}"),
        ("steps trained", f"{facts.steps or 0:,}"),
        ("tokens seen", f"{facts.tokens_seen or 0:,}"),
        ("final training loss", _loss(facts.final_loss)),
        (best_loss_label(facts), _loss(facts.best_loss)),
        ("tokenizer", f"{facts.tokenizer or trained.tokenizer.name} ({trained.tokenizer.vocab_size:,} tokens)"),
        ("context length", f"{facts.block_size or trained.config.model.block_size:,} tokens"),
    ]
    return "### About this model\n\n" + "\n".join(f"- **{name}**: {value}" for name, value in rows)


def example_prompts(tokenizer: Tokenizer) -> list[str]:
    """The example prompts this tokenizer can encode."""
    usable = []
    for prompt in EXAMPLE_PROMPTS:
        with contextlib.suppress(UserError):
            tokenizer.encode(prompt)
            usable.append(prompt)
    return usable


def build_demo(trained: TrainedModel, limits: DemoLimits = DEFAULT_LIMITS,
               gpu_task: Callable[[Callable[..., Iterator[str]]], Callable[..., Iterator[str]]] | None = None
               ) -> gr.Blocks:
    """The page, with its queue configured; launch() it or mount it in an app.

    `gpu_task` decorates the generation handler: a ZeroGPU Space passes ``spaces.GPU(duration=...)``, which
    attaches a GPU only while a generation runs.
    """
    limits.validate()
    replicas = ReplicaPool(trained.model)

    def generate(prompt: str, max_new_tokens: float, temperature: float, top_k: float, top_p: float,
                 seed: float | None) -> Iterator[str]:
        yield from generate_stream(trained, limits, prompt, max_new_tokens, temperature, top_k, top_p, seed,
                                   replicas=replicas)

    if gpu_task is not None:
        generate = gpu_task(generate)
    preset = trained.facts.preset
    with gr.Blocks(title=f"gptforge: {preset}", analytics_enabled=False) as demo:
        gr.Markdown(f"# gptforge: {preset}\nA GPT trained from scratch with gptforge. Write the start of a text "
                    "and the model continues it, token by token.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="ROMEO:", max_length=limits.max_prompt_chars,
                                    elem_id="prompt")
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    # active only while a generation runs: idle, there is nothing to stop
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False)
                output = gr.Textbox(label="Output", lines=14, max_lines=30, interactive=False, buttons=["copy"],
                                    elem_id="output")
                examples = example_prompts(trained.tokenizer)
                if examples:
                    gr.Examples(examples=[[text] for text in examples], inputs=[prompt], label="Example prompts")
            with gr.Column(scale=2):
                max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=min(200, limits.max_new_tokens), step=1,
                                           label="Max new tokens", elem_id="max-new-tokens")
                temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature",
                                        info="0 is greedy: always the most likely token")
                top_k = gr.Slider(0, trained.tokenizer.vocab_size, value=min(200, trained.tokenizer.vocab_size),
                                  step=1, label="Top-k", info="sample from the k most likely tokens; 0 is off")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p",
                                  info="sample from the most likely tokens holding this much probability; 1 is off")
                seed = gr.Number(value=-1, precision=0, label="Seed", info="-1 or blank: a new sample every time")
                gr.Markdown(facts_markdown(trained))
        stop_active, stop_idle = (lambda: gr.Button(interactive=True)), (lambda: gr.Button(interactive=False))
        started = generate_button.click(stop_active, outputs=stop_button, queue=False, api_visibility="private")
        event = started.then(generate, inputs=[prompt, max_new_tokens, temperature, top_k, top_p, seed],
                             outputs=output, api_name="generate")
        event.then(stop_idle, outputs=stop_button, queue=False, api_visibility="private")
        stop_button.click(stop_idle, outputs=stop_button, cancels=[event], queue=False, api_visibility="private")
    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return demo


# Gradio's upload endpoint answers every page, whatever its components; this demo takes text only, so a
# file of any size is refused (413) rather than kept in the temporary folder. Pass it to launch().
NO_UPLOADS = 0  # bytes


def check_address(host: str, port: int) -> None:
    """Refuse a port or host that cannot be served before anything binds: Gradio reports these with a
    traceback from its server thread, or a misleading "no empty port" message."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port!r}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise UserError(f"cannot serve on {host}:{port}: {host!r} is not an address of this machine "
                        f"({exc}); pass --host 127.0.0.1 or another interface's address") from None


def serve(trained: TrainedModel, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          limits: DemoLimits = DEFAULT_LIMITS) -> None:
    """Serve the demo until Ctrl+C; only this machine can reach it unless `host` or `share` say otherwise."""
    check_address(host, port)
    demo = build_demo(trained, limits)
    try:
        # quiet: the URL is printed below; Gradio still prints the public link (or why it failed) when sharing
        _, local_url, _ = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                                      quiet=True, max_file_size=NO_UPLOADS)
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port} ({exc}); pass a free --port or another --host") from None
    # flushed: the URL must show at once when the output is a pipe (`gptforge serve | tee`, a job runner)
    print(f"gptforge demo of {trained.source} at {local_url}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}, so other machines can reach this demo", flush=True)
    print("press Ctrl+C to stop", flush=True)
    demo.block_thread()
