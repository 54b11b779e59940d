"""`gptforge chat`: one model load, streamed continuations, /commands, and clean ways out; stdin is fed."""

import io
from collections.abc import Callable
from pathlib import Path

import pytest

import gptforge.use.chat as chat_module
import gptforge.use.load
from conftest import run_main
from gptforge.generate import SamplingSettings
from gptforge.use.chat import apply_command
from gptforge.use.load import load_trained


def chat_session(tiny_run: Path, lines: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                 *flags: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    status, out, err = run_main(["chat", str(tiny_run), "--device", "cpu", *flags], capsys)
    assert err == ""
    return status, out


def reader(*lines: str) -> Callable[[str], str]:
    """`input` for these lines, then end of input."""
    remaining = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(remaining)
        except StopIteration:
            raise EOFError from None

    return read


def greedy_sample(tiny_run: Path, prompt: str, tokens: int, capsys: pytest.CaptureFixture[str]) -> str:
    status, out, _ = run_main(["sample", "--run", str(tiny_run), "--prompt", prompt, "--max-new-tokens", str(tokens),
                               "--temperature", "0", "--device", "cpu"], capsys)
    assert status == 0
    return out.removesuffix("\n")


def test_each_line_is_continued_with_the_model_loaded_once_and_commands_change_the_settings(
        tiny_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {prompt: greedy_sample(tiny_run, prompt, tokens, capsys)
                for prompt, tokens in (("ROMEO:", 7), ("JULIET:", 3))}
    loads = []
    real_load = gptforge.use.load.load_trained
    monkeypatch.setattr(gptforge.use.load, "load_trained", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    status, out = chat_session(tiny_run, "/temp 0\n/max 7\nROMEO:\n/max 3\n/topk 0\nJULIET:\n/settings\n/quit\n"
                               "NOT READ:\n", capsys, monkeypatch)
    assert status == 0 and len(loads) == 1
    answers = [line.removeprefix("> ") for line in out.splitlines() if line.startswith("> ")]
    assert expected["ROMEO:"] in answers and expected["JULIET:"] in answers  # the same greedy text as sample
    assert "temperature 0.0, top-k off, top-p off, max 3 new tokens, seed off" in answers
    assert "NOT READ" not in out


def test_end_of_input_and_ctrl_c_at_the_prompt_leave_cleanly(tiny_run: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    status, out = chat_session(tiny_run, "", capsys, monkeypatch)  # Ctrl-D at once
    assert status == 0 and out.endswith("> \n")

    def ctrl_c(prompt: str) -> str:
        raise KeyboardInterrupt

    trained = load_trained(run=tiny_run, device="cpu")
    out_buffer = io.StringIO()
    chat_module.chat(trained, SamplingSettings(), read=ctrl_c, out=out_buffer)
    assert out_buffer.getvalue().endswith("\n") and "Traceback" not in out_buffer.getvalue()


def test_ctrl_c_stops_a_continuation_and_returns_to_the_prompt(tiny_run: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted_stream(*args: object) -> object:
        yield "ab"
        raise KeyboardInterrupt

    monkeypatch.setattr(chat_module, "stream_text", interrupted_stream)
    out = io.StringIO()
    chat_module.chat(load_trained(run=tiny_run, device="cpu"), SamplingSettings(), read=reader("ROMEO:", "/settings"),
                     out=out)
    assert "ROMEO:ab [stopped]\ntemperature 0.8" in out.getvalue()  # back at the prompt: /settings ran


def test_a_continuation_is_streamed_piece_by_piece(tiny_run: Path) -> None:
    class Recorder(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    out = Recorder()
    chat_module.chat(load_trained(run=tiny_run, device="cpu"), SamplingSettings(max_new_tokens=12),
                     read=reader("ROMEO:"), out=out)
    assert out.flushes >= 12  # one write and flush per character, not one at the end


@pytest.mark.parametrize("line,message", [("/temp hot", "'hot' is not a number"), ("/temp -1", "temperature must be"),
                                          ("/topp 2", "top_p must be in (0, 1]"), ("/max", "/max needs a value"),
                                          ("/bogus 1", "unknown command /bogus")])
def test_a_bad_command_is_an_error_line_that_changes_nothing(line: str, message: str) -> None:
    settings = SamplingSettings()
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace("]", r"\]")):
        apply_command(line, settings)
    assert settings == SamplingSettings()


def test_commands_set_and_turn_off_settings() -> None:
    settings = SamplingSettings(top_p=0.5, seed=3)
    for line in ("/temp 0.7", "/topk 0", "/topp off", "/max 64", "/seed off"):
        settings = apply_command(line, settings)
    assert (settings.temperature, settings.top_k, settings.top_p, settings.max_new_tokens, settings.seed) == \
        (0.7, None, None, 64, None)
    assert apply_command("/topk 5", settings).top_k == 5 and apply_command("/seed 9", settings).seed == 9


def test_an_unknown_character_is_an_error_line_and_the_loop_goes_on(tiny_run: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    status, out = chat_session(tiny_run, "ROMEO: \u00e9\u00e9\n/settings\n", capsys, monkeypatch)
    assert status == 0
    assert "> error: character '\u00e9' is not in this char tokenizer's vocabulary" in out
    assert "> temperature 0.8" in out
