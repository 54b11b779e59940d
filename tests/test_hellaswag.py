"""HellaSwag by completion loss: the scorer against a plain reference, the file's lookup and checks, the CLI,
and the score during training."""

import io
import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_error, run_main, tiny_char_config
from gptforge import hellaswag
from gptforge.config import GPTConfig, build_config
from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.tokenizer import GPT2Tokenizer
from gptforge.train.plot import plot_run
from gptforge.train.session import train

FIXTURE = Path(__file__).parent / "fixtures" / "hellaswag_val_sample.jsonl"


@pytest.fixture(scope="module")
def tokenizer() -> GPT2Tokenizer:
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def examples() -> list[hellaswag.Example]:
    return hellaswag.read_examples(FIXTURE)


def random_model(block_size: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=50304)).eval()


def reference_answers(model: GPT, tokenizer: GPT2Tokenizer, example: hellaswag.Example) -> tuple[int, int]:
    """One row at a time, no padding, no masks: the losses of each ending's tokens, summed and averaged."""
    context = tokenizer.encode(example.context)
    sums, means = [], []
    for ending in example.endings:
        ending_ids = tokenizer.encode(" " + ending)
        row = torch.tensor([context + ending_ids])
        with torch.no_grad():
            logits = model(row)[0][0, :, :tokenizer.vocab_size]
        losses = [F.cross_entropy(logits[len(context) + i - 1], torch.tensor(token)).item()
                  for i, token in enumerate(ending_ids)]
        sums.append(sum(losses))
        means.append(sum(losses) / len(losses))
    return min(range(4), key=sums.__getitem__), min(range(4), key=means.__getitem__)


def score(model: GPT, examples: list, tokenizer: GPT2Tokenizer, **kwargs) -> hellaswag.HellaSwagScore:
    return hellaswag.score(lambda tokens: model(tokens)[0], examples, tokenizer, model.config.block_size,
                           torch.device("cpu"), **kwargs)


def test_the_fixture_reads_as_eight_examples(examples: list[hellaswag.Example]) -> None:
    assert len(examples) == 8
    assert [e.label for e in examples] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert all(len(e.endings) == 4 for e in examples)


def test_batched_scores_equal_a_one_row_at_a_time_reference(tokenizer, examples) -> None:
    model = random_model()
    answers = [reference_answers(model, tokenizer, example) for example in examples]
    expected_acc = sum(a == e.label for (a, _), e in zip(answers, examples, strict=True)) / len(examples)
    expected_norm = sum(a == e.label for (_, a), e in zip(answers, examples, strict=True)) / len(examples)
    for batch_size in (1, 3, 8):
        result = score(model, examples, tokenizer, batch_size=batch_size)
        assert result.examples == 8
        assert (result.acc, result.acc_norm) == (expected_acc, expected_norm), batch_size


def test_ranks_share_the_examples_and_run_the_same_number_of_batches(tokenizer, examples) -> None:
    model = random_model()
    whole = score(model, examples, tokenizer, batch_size=2)
    calls, parts = [], []
    for rank in range(3):
        def forward(tokens: torch.Tensor, rank: int = rank) -> torch.Tensor:
            calls.append(rank)
            return model(tokens)[0]
        parts.append(hellaswag.score(forward, examples, tokenizer, 64, torch.device("cpu"), batch_size=2, rank=rank,
                                     world_size=3))
    assert [part.examples for part in parts] == [3, 3, 2]
    assert sum(p.correct for p in parts) == whole.correct and sum(p.correct_norm for p in parts) == whole.correct_norm
    assert calls.count(0) == calls.count(1) == calls.count(2) == 2  # FSDP needs every rank at every forward


def test_acc_norm_is_not_fooled_by_short_endings_where_acc_is(tokenizer, examples) -> None:
    """A unigram "model" that strongly prefers the tokens of the right endings: per token every right ending
    is likelier, so acc_norm is perfect; summed, the long right ending of the last example loses to a
    two-token wrong one, which is why acc_norm is the figure quoted."""
    liked = {t for e in examples for t in tokenizer.encode(" " + e.endings[e.label])}
    unigram = torch.zeros(50304)
    unigram[sorted(liked)] = 30.0

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        return unigram.expand(*tokens.shape, -1)

    result = hellaswag.score(forward, examples, tokenizer, 64, torch.device("cpu"), batch_size=4)
    assert result.acc_norm == 1.0
    assert result.acc < 1.0


def test_rows_longer_than_the_context_keep_the_ending(tokenizer, examples) -> None:
    block = 8
    for example in examples:
        for (row, start), ending in zip(hellaswag.render(example, tokenizer, block), example.endings, strict=True):
            ending_ids = tokenizer.encode(" " + ending)
            assert len(row) <= block and 1 <= start < len(row)
            assert row[start:] == ending_ids[-(len(row) - start):]
    result = score(random_model(block_size=block), examples, tokenizer, batch_size=4)
    assert result.examples == 8 and 0 <= result.acc_norm <= 1


@pytest.mark.parametrize(("line", "expected"), [
    ("not json", "line 2 is not JSON"),
    ('[1, 2]', "line 2 is not a JSON object"),
    ('{"ctx": "a", "endings": ["a", "b", "c"], "label": 0}', "endings must be a list of 4"),
    ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": 4}', "label must be 0, 1, 2 or 3"),
    ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": true}', "label must be 0, 1, 2 or 3"),
    ('{"ctx": 5, "endings": ["a", "b", "c", "d"], "label": 1}', "ctx must be a string"),
    ("[" * 100_000 + "]" * 100_000, "characters long"),
])
def test_a_bad_line_is_refused_with_its_number(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(FIXTURE.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(UserError, match=expected):
        hellaswag.read_examples(path)


def test_the_file_is_found_locally_downloaded_once_or_asked_for(tmp_path: Path, monkeypatch) -> None:
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="put hellaswag_val.jsonl in GPTFORGE_DATA_DIR"):
        hellaswag.find_hellaswag()
    downloads = []

    def serve(url, timeout):
        downloads.append(url)
        return io.BytesIO(FIXTURE.read_bytes())

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", serve)
    first = hellaswag.find_hellaswag()
    assert first.read_bytes() == FIXTURE.read_bytes() and downloads == [hellaswag.HELLASWAG_URL]
    assert hellaswag.find_hellaswag() == first and len(downloads) == 1  # the cached copy, no second download
    with pytest.raises(UserError, match="HellaSwag file not found"):
        hellaswag.find_hellaswag(tmp_path / "missing.jsonl")


def test_a_download_that_is_not_hellaswag_is_not_kept(monkeypatch) -> None:
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>oops</html>"))
    with pytest.raises(UserError, match="not JSON"):
        hellaswag.find_hellaswag()
    assert not (hellaswag.cache_dir() / hellaswag.HELLASWAG_FILENAME).exists()


def gpt2_config(out: Path, **settings):
    return build_config("tiny", flags={"tokenizer": "gpt2", "device": "cpu", "progress": False, "max_steps": 4,
                                       "batch_size": 2, "eval_interval": 0, "sample_interval": 0,
                                       "out": str(out), **settings})


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny GPT-2-tokenizer run that scored HellaSwag every 2 steps while it trained."""
    with pytest.MonkeyPatch.context() as env:
        cache = tmp_path_factory.mktemp("hellaswag-cache")
        (cache / hellaswag.HELLASWAG_FILENAME).write_bytes(FIXTURE.read_bytes())
        env.setenv("GPTFORGE_DATA_DIR", str(data_dir))
        env.setenv("GPTFORGE_CACHE_DIR", str(cache))
        return train(gpt2_config(tmp_path_factory.mktemp("hs") / "run", hellaswag_interval=2)).run_dir


def test_training_scores_hellaswag_into_metrics_and_the_plot(gpt2_run: Path) -> None:
    records = [json.loads(line) for line in (gpt2_run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if r.get("kind") == "hellaswag"]
    assert [r["step"] for r in scored] == sorted({r["step"] for r in scored}) and len(scored) == 2
    assert all(0 <= r["acc"] <= 1 and 0 <= r["acc_norm"] <= 1 for r in scored)
    assert all(r["acc"] * 8 == round(r["acc"] * 8) for r in scored)  # counts of the fixture's 8 examples
    assert "HellaSwag acc" in (gpt2_run / "train.log").read_text()
    with_row = plot_run(gpt2_run, gpt2_run / "with.png")
    (gpt2_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records if r not in scored))
    without_row = plot_run(gpt2_run, gpt2_run / "without.png")
    (gpt2_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert png_height(with_row) > png_height(without_row)  # the HellaSwag row is drawn


def png_height(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")


def test_eval_hellaswag_scores_a_run(gpt2_run: Path, capsys) -> None:
    status, out, err = run_main(["eval", "--run", str(gpt2_run), "--device", "cpu", "--hellaswag", str(FIXTURE),
                                 "--batch-size", "3"], capsys)
    assert status == 0, err
    assert "(8 examples): acc " in out and "acc_norm" in out
    status, out, err = run_main(["eval", "--run", str(gpt2_run), "--device", "cpu", "--hellaswag", str(FIXTURE),
                                 "--max-batches", "1", "--batch-size", "3"], capsys)
    assert status == 0 and "(3 examples)" in out, err


def test_eval_hellaswag_refusals_are_one_line(gpt2_run: Path, tiny_run: Path, tmp_path: Path, capsys) -> None:
    base = ["eval", "--device", "cpu", "--hellaswag"]
    assert_one_error(*run_main([*base, str(FIXTURE), "--run", str(tiny_run)], capsys)[::2], "GPT-2 tokenizer")
    assert_one_error(*run_main([*base, str(tmp_path / "nope.jsonl"), "--run", str(gpt2_run)], capsys)[::2],
                     "HellaSwag file not found")
    assert_one_error(*run_main([*base, str(FIXTURE), "--run", str(gpt2_run), "--data", "shakespeare"], capsys)[::2],
                     "leave out --data")
    assert_one_error(*run_main([*base, str(FIXTURE), "--run", str(gpt2_run), "--batch-size", "0"], capsys)[::2],
                     "--batch-size must be positive")


def test_a_char_run_cannot_ask_for_hellaswag_and_leaves_no_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="GPT-2 tokenizer"):
        train(tiny_char_config(tmp_path / "run", hellaswag_interval=5))
    assert not (tmp_path / "run").exists()


def test_a_missing_file_stops_training_before_the_run_folder_exists(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen",
                        lambda url, timeout: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    with pytest.raises(UserError, match="cannot download HellaSwag"):
        train(gpt2_config(tmp_path / "run", hellaswag_interval=2))
    assert not (tmp_path / "run").exists()
