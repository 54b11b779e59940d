"""The web demo's handler and page, on a tiny char model trained once for this module (no server, no browser)."""

import json
import socket
from itertools import pairwise
from pathlib import Path

import gradio as gr
import pytest
import torch

from conftest import tiny_char_config
from gptforge.errors import UserError
from gptforge.train.session import train
from gptforge.trained_model import TrainedModel
from gptforge.use.app import (
    DemoLimits,
    ReplicaPool,
    build_demo,
    example_prompts,
    facts_markdown,
    generate_stream,
    serve,
)
from gptforge.use.load import load_trained


@pytest.fixture(scope="module")
def trained(tiny_run: Path) -> TrainedModel:
    return load_trained(run=tiny_run, device="cpu")

LIMITS = DemoLimits(max_new_tokens=50, max_prompt_chars=100)
GOOD = {"max_new_tokens": 30, "temperature": 0.8, "top_k": 0, "top_p": 0.9, "seed": 7}


def run(trained: TrainedModel, prompt: str = "ROMEO:", **changes) -> list[str]:
    return list(generate_stream(trained, LIMITS, prompt, **{**GOOD, **changes}))


def test_build_demo_returns_blocks_with_a_generate_api(trained) -> None:
    demo = build_demo(trained, LIMITS)
    assert isinstance(demo, gr.Blocks)
    assert "generate" in {dependency.api_name for dependency in demo.fns.values()}


def test_handler_streams_growing_text_from_the_prompt(trained) -> None:
    outputs = run(trained)
    assert len(outputs) > 5
    assert all(text.startswith("ROMEO:") for text in outputs)
    assert all(len(later) > len(earlier) for earlier, later in pairwise(outputs))
    assert len(outputs[-1]) == len("ROMEO:") + 30  # a char model: one character per token


def test_seed_repeats_and_different_seeds_differ(trained) -> None:
    assert run(trained, seed=3)[-1] == run(trained, seed=3)[-1]
    assert run(trained, seed=3)[-1] != run(trained, seed=4)[-1]


def test_greedy_ignores_the_seed(trained) -> None:
    assert run(trained, temperature=0, seed=1)[-1] == run(trained, temperature=0, seed=2)[-1]


@pytest.mark.parametrize(("prompt", "changes", "message"), [
    ("ROMEO:", {"max_new_tokens": 51}, "max new tokens"),
    ("ROMEO:", {"max_new_tokens": 0}, "max new tokens"),
    ("ROMEO:", {"max_new_tokens": 2.5}, "whole number"),
    ("ROMEO:", {"temperature": 5}, "temperature"),
    ("ROMEO:", {"temperature": float("nan")}, "finite"),
    ("ROMEO:", {"top_p": 0}, "top-p"),
    ("ROMEO:", {"top_p": 1.5}, "top-p"),
    ("ROMEO:", {"top_k": -1}, "top-k"),
    ("ROMEO:", {"seed": "abc"}, "seed"),
    ("x" * 101, {}, "at most 100"),
    ("ROMEO: \u00e9t\u00e9 \U0001f600", {}, "not in this char tokenizer"),
])
def test_out_of_range_requests_are_refused_before_generating(trained, prompt, changes, message) -> None:
    with pytest.raises(gr.Error, match=message):
        run(trained, prompt, **changes)


def test_blank_or_negative_seed_samples_afresh(trained) -> None:
    assert len(run(trained, seed=None)[-1]) == len(run(trained, seed=-1)[-1]) == len("ROMEO:") + 30


def test_replicas_share_weights_but_not_kv_caches(trained) -> None:
    pool = ReplicaPool(trained.model)
    with pool.borrow() as first, pool.borrow() as second:
        assert first is not second
        assert first.transformer.h[0].attn is not second.transformer.h[0].attn  # where the KV cache lives
        assert first.transformer.wte.weight.data_ptr() == second.transformer.wte.weight.data_ptr()
        tokens = torch.randint(0, trained.tokenizer.vocab_size, (2, 16))
        torch.testing.assert_close(first(tokens)[0], second(tokens)[0], rtol=0, atol=0)
    with pool.borrow() as again:
        assert again in (first, second)  # returned replicas are reused


def test_interleaved_requests_match_one_at_a_time(trained) -> None:
    pool = ReplicaPool(trained.model)
    alone = [run(trained, prompt, seed=seed, temperature=0.5)[-1] for prompt, seed in (("ROMEO:", 1), ("KING:", 2))]
    first = generate_stream(trained, LIMITS, "ROMEO:", **{**GOOD, "seed": 1, "temperature": 0.5}, replicas=pool)
    second = generate_stream(trained, LIMITS, "KING:", **{**GOOD, "seed": 2, "temperature": 0.5}, replicas=pool)
    *_, (first_text, second_text) = zip(first, second, strict=True)  # one step of each in turn
    assert [first_text, second_text] == alone


def test_facts_panel_shows_parameters_steps_and_context(trained) -> None:
    text = facts_markdown(trained)
    assert f"{trained.facts.parameters:,}" in text
    assert "," in f"{trained.facts.parameters:,}"  # formatted with thousands separators
    assert "**steps trained**: 20" in text
    assert "**context length**: 32 tokens" in text
    assert "char (65 tokens)" in text
    assert "**preset**: `tiny`" in text
    assert f"**final training loss**: {trained.facts.final_loss:.4f}" in text
    assert f"**best train loss**: {trained.facts.best_loss:.4f}" in text  # the tiny run has no evaluations


def test_stop_is_active_only_while_a_generation_runs(trained) -> None:
    demo = build_demo(trained)
    config, demo_fns = demo.get_config_file(), demo.fns
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"] if "props" in c}
    stop, generate = ids["stop"], ids["generate"]
    assert next(c for c in config["components"] if c["id"] == stop)["props"]["interactive"] is False  # idle
    deps = {d["id"]: d for d in config["dependencies"]}
    generation = next(d for d in deps.values() if d["api_name"] == "generate")

    def sets_stop(dep: dict) -> bool:
        assert dep["outputs"] == [stop]
        return demo_fns[dep["id"]].fn().interactive

    before = deps[generation["trigger_after"]]  # the click on Generate, then the generation
    assert [tuple(t) for t in before["targets"]] == [(generate, "click")] and sets_stop(before) is True
    after = [d for d in deps.values() if d["trigger_after"] == generation["id"]]
    assert len(after) == 1 and sets_stop(after[0]) is False  # finished: idle again
    on_stop = [d for d in deps.values() if [tuple(t) for t in d["targets"]] == [(stop, "click")]]
    assert any(generation["id"] in d["cancels"] for d in on_stop)
    assert [sets_stop(d) for d in on_stop if d["outputs"]] == [False]  # stopped: idle again


def test_best_loss_says_whether_it_is_the_val_or_the_train_loss(tiny_run, tmp_path) -> None:
    evaluated = train(tiny_char_config(tmp_path / "val", max_steps=4, eval_interval=2, eval_batches=2)).run_dir
    for run_dir, split in ((tiny_run, "train"), (evaluated, "val")):
        trained = load_trained(run=run_dir, device="cpu")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if split == "val":
            candidates = [r["val_loss"] for r in records if r["kind"] == "eval"]
        else:  # without evaluations the trainer keeps the training loss at its saves: the tiny run's last step
            candidates = [[r for r in records if r["kind"] == "train"][-1]["loss"]]
        best = trained.facts.best_loss
        assert best == pytest.approx(min(candidates))
        assert f"**best {split} loss**: {best:.4f}" in facts_markdown(trained)
        assert f"best loss ({split}): {best:.4f}" in (run_dir / "summary.txt").read_text()


def test_serve_command_reads_each_model_source_with_share_off_and_the_caps(trained, tiny_run, tmp_path,
                                                                           monkeypatch) -> None:
    """`gptforge serve` hands serve() the model from --run, --checkpoint or --hf, bound to 127.0.0.1, not shared."""
    pytest.importorskip("transformers", reason="--hf needs transformers (the dev extra has it)")
    from gptforge.cli import main
    from gptforge.interop.hf_export import export_hf
    from gptforge.use import app

    served = []
    monkeypatch.setattr(app, "serve", lambda model, **kwargs: served.append((model, kwargs)))
    export_hf(trained, tmp_path / "hf")
    sources = [["--run", str(tiny_run)], ["--checkpoint", str(tiny_run / "checkpoints" / "last.pt")],
               ["--hf", str(tmp_path / "hf")]]
    for source in sources:
        assert main(["serve", *source, "--device", "cpu", "--max-new-tokens-cap", "77"]) == 0
    x = torch.tensor([trained.tokenizer.encode("ROMEO:")])
    with torch.no_grad():
        expected = trained.model(x)[0][..., :65]
        for model, kwargs in served:
            assert kwargs["host"] == "127.0.0.1" and kwargs["share"] is False
            assert kwargs["limits"].max_new_tokens == 77
            torch.testing.assert_close(model.model(x)[0][..., :65], expected, atol=1e-5, rtol=0)
    assert len(served) == 3


def test_examples_are_only_prompts_the_tokenizer_can_encode(trained) -> None:
    examples = example_prompts(trained.tokenizer)
    assert "ROMEO:" in examples
    for prompt in examples:
        trained.tokenizer.encode(prompt)


@pytest.mark.parametrize("field", ["max_new_tokens", "concurrency", "queue_size", "max_prompt_chars"])
def test_limits_must_be_positive(field) -> None:
    with pytest.raises(UserError, match=field):
        DemoLimits(**{field: 0}).validate()


def test_serve_on_a_busy_port_is_a_user_error(trained) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot serve on 127.0.0.1:{port}"):
            serve(trained, port=port, limits=LIMITS)


@pytest.mark.xdist_group("servers")  # with the other tests that pick a free port, on one worker
def test_a_refused_request_is_one_line_on_the_server_console(trained, monkeypatch, capfd) -> None:
    """The caller reads why; the console gets one line, not Gradio's traceback of the refusal."""
    from gradio_client import Client

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a CI proxy must not see localhost
    demo = build_demo(trained, LIMITS)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=False)
        capfd.readouterr()
        with pytest.raises(Exception, match="max new tokens must be a whole number"):
            client.predict("ROMEO:", 2.5, 0.5, 0, 1.0, 1, api_name="/generate")
        err = capfd.readouterr().err
    finally:
        demo.close()
    assert err == "demo: refused a request: max new tokens must be a whole number, got 2.5\n"
