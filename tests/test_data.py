import hashlib
import io
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from conftest import read_log, run_main
from gptforge import data
from gptforge.data import (
    RandomSampler,
    SequentialSampler,
    check_corpus_size,
    find_dataset,
    load_tokens,
    make_sampler,
    read_corpus,
    split_tokens,
)
from gptforge.errors import UserError
from gptforge.paths import cache_dir
from gptforge.tokenizer import CharTokenizer, GPT2Tokenizer


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "no-data"
    folder.mkdir()
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(folder))
    return folder


# --- finding and reading corpora ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["shakespeare", "tinyshakespeare", "Shakespeare"])
def test_named_dataset_from_data_dir(data_dir, name):
    assert find_dataset(name) == [data_dir / "tinyshakespeare.txt"]


def test_named_dataset_from_cache(data_dir, empty_data_dir):
    shutil.copy(data_dir / "tinyshakespeare.txt", cache_dir() / "tinyshakespeare.txt")
    assert find_dataset("shakespeare") == [cache_dir() / "tinyshakespeare.txt"]


def test_named_dataset_download(data_dir, empty_data_dir, monkeypatch):
    contents = (data_dir / "tinyshakespeare.txt").read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(contents))
    assert find_dataset("shakespeare") == [cache_dir() / "tinyshakespeare.txt"]
    assert (cache_dir() / "tinyshakespeare.txt").read_bytes() == contents


def test_corrupt_download_leaves_nothing(empty_data_dir, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>rate limited</html>"))
    with pytest.raises(UserError, match="corrupt"):
        find_dataset("shakespeare")
    assert not any(cache_dir().iterdir())


def test_offline_without_data_says_what_to_do(empty_data_dir, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="set GPTFORGE_DATA_DIR to a folder with tinyshakespeare.txt"):
        find_dataset("shakespeare")


def test_unknown_name():
    with pytest.raises(UserError, match="no dataset or file named 'wikitext'; named datasets: shakespeare"):
        find_dataset("wikitext")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found") as info:
        find_dataset(str(tmp_path / "book.txt"))
    assert "book.txt" in str(info.value)


def test_empty_file_and_empty_folder(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text("not a txt")
    with pytest.raises(UserError, match="has no .txt files"):
        read_corpus(str(tmp_path / "sub"))


def test_non_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(UserError, match="byte offset 3") as info:
        read_corpus(str(path))
    assert str(path) in str(info.value) and "0xe9" in str(info.value)


def test_folder_of_txt_files_sorted_and_joined(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "c.md").write_text("ignored")
    corpus = read_corpus(str(tmp_path))
    assert corpus.text == "first\nsecond"
    assert corpus.sha256 == hashlib.sha256(b"first\nsecond").hexdigest()
    assert corpus.location == tmp_path.resolve() and corpus.record.path == str(tmp_path.resolve())


def test_a_folder_corpus_reads_its_txt_files_at_any_depth_in_a_fixed_order(tmp_path):
    """Files of a folder before its subfolders', each level sorted; links out of the folder, hidden and
    non-.txt files left out; the same text (and sha256) however the folder was written."""
    root = tmp_path / "corpus"
    for relative, text in [("b.txt", "top b"), ("a.txt", "top a"), ("z/2.txt", "z two"), ("z/1.txt", "z one"),
                           ("m/deep/x.txt", "deep x"), ("m/notes.md", "not text"), (".hidden.txt", "hidden")]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    (root / "z" / "link.txt").symlink_to(tmp_path / "outside" / "secret.txt")  # leads out: skipped
    (root / "linked-folder").symlink_to(tmp_path / "outside", target_is_directory=True)  # not followed
    (root / "m" / "again.txt").symlink_to(root / "a.txt")  # stays inside: read
    corpus = read_corpus(str(root))
    assert corpus.text == "\n".join(["top a", "top b", "top a", "deep x", "z one", "z two"])
    assert [str(path.relative_to(root.resolve())) for path in corpus.files] == [
        "a.txt", "b.txt", "m/again.txt", "m/deep/x.txt", "z/1.txt", "z/2.txt"]
    size = sum(len(text) for text in ["top a", "top b", "top a", "deep x", "z one", "z two"])
    assert corpus.size_bytes == size
    assert corpus.describe() == f"6 files ({size / 1e6:.1f} MB) from {root.resolve()}"
    assert read_corpus(str(root)).sha256 == corpus.sha256


def test_a_run_on_a_folder_says_how_many_files_went_in(tmp_path, data_dir, capsys):
    root = tmp_path / "corpus"
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:12_000]
    for index, relative in enumerate(["one.txt", "act2/two.txt", "act2/scene/three.txt"]):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text[index * 4000:(index + 1) * 4000], encoding="utf-8")
    run_dir = tmp_path / "run"
    status, out, err = run_main(["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(root), "--out",
                                 str(run_dir), "--device", "cpu", "--no-progress", "--max-steps", "1",
                                 "--block-size", "16", "--batch-size", "2", "--eval-batches", "1",
                                 "--sample-tokens", "2"], capsys)
    assert status == 0, err
    line = f"data: 3 files (0.0 MB) from {root.resolve()} | tokenizer char"
    assert line in out and line in read_log(run_dir)
    assert f"{12_000 + 2:,} tokens:" in out  # the three files joined by newlines
    status, out, err = run_main(["prepare", "--data", str(root), "--tokenizer", "char"], capsys)
    assert status == 0, err
    assert out.startswith(f"3 files (0.0 MB) from {root.resolve()}: {12_002:,} tokens (char tokenizer"), out


# --- token cache ----------------------------------------------------------------------------------

def test_load_tokens_caches_and_reuses(data_dir, monkeypatch):
    tokenizer = GPT2Tokenizer()
    tokens, path = load_tokens("shakespeare", tokenizer)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and not tokens.flags.writeable
    assert len(tokens) == 338_025 and tokens[:4].tolist() == [5962, 22307, 25, 198]
    assert path.parent == cache_dir() / "tokens" and path.with_suffix(".json").is_file()

    def no_retokenizing(*args, **kwargs):
        raise AssertionError("re-tokenized although the cache exists")

    monkeypatch.setattr(GPT2Tokenizer, "encode_corpus", no_retokenizing)
    again, again_path = load_tokens("shakespeare", tokenizer)
    assert again_path == path and np.array_equal(again, tokens)


def test_cache_key_depends_on_content_and_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n")
    char_tokens, char_path = load_tokens(str(corpus), CharTokenizer.from_text("hello world\n"))
    gpt2_tokens, gpt2_path = load_tokens(str(corpus), GPT2Tokenizer())
    assert char_path != gpt2_path and len(char_tokens) == 12 and gpt2_tokens.tolist() == [31373, 995, 198]
    corpus.write_text("hello there\n")
    edited, edited_path = load_tokens(str(corpus), GPT2Tokenizer())
    assert edited_path != gpt2_path and edited.tolist() == [31373, 612, 198]


def test_truncated_cache_is_rebuilt(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcabc")
    tokenizer = CharTokenizer("abc")
    _, path = load_tokens(str(corpus), tokenizer)
    path.write_bytes(path.read_bytes()[:4])
    tokens, _ = load_tokens(str(corpus), tokenizer)
    assert tokens.tolist() == [0, 1, 2, 0, 1, 2]


# --- splits ---------------------------------------------------------------------------------------

def test_split_tokens():
    tokens = np.arange(100)
    train, val = split_tokens(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    train, val = split_tokens(tokens, 0.0)
    assert len(train) == 100 and len(val) == 0
    with pytest.raises(UserError, match="val_fraction"):
        split_tokens(tokens, 1.0)


def test_corpus_shorter_than_a_block():
    check_corpus_size(np.zeros(33), block_size=32)
    with pytest.raises(UserError, match="the validation split has 32 tokens") as info:
        check_corpus_size(np.zeros(32), block_size=32, what="validation split")
    assert "needs at least 33" in str(info.value) and "--block-size" in str(info.value)
    with pytest.raises(UserError, match="block_size 64 needs at least 65"):
        SequentialSampler(np.zeros(64, dtype=np.uint16), batch_size=1, block_size=64)


# --- samplers -------------------------------------------------------------------------------------

TOKENS = np.arange(1000, dtype=np.uint16)


def test_sequential_batches_are_consecutive_windows():
    sampler = SequentialSampler(TOKENS, batch_size=4, block_size=10)
    x, y = sampler.next_batch()
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, 10)
    assert x.flatten().tolist() == list(range(40)) and y.flatten().tolist() == list(range(1, 41))
    assert sampler.next_batch()[0][0, 0].item() == 40


def test_sequential_epochs_wrap_and_drop_the_tail():
    sampler = SequentialSampler(TOKENS, batch_size=3, block_size=100)  # 999 // 300 = 3 batches per epoch
    assert sampler.batches_per_epoch == 3 and sampler.tokens_per_epoch == 900
    firsts = [sampler.next_batch()[0][0, 0].item() for _ in range(7)]
    assert firsts == [0, 300, 600, 0, 300, 600, 0]
    assert sampler.epoch == pytest.approx(7 / 3)


def test_sequential_exact_fit_uses_the_last_token_as_a_target():
    sampler = SequentialSampler(np.arange(41), batch_size=4, block_size=10)
    assert sampler.batches_per_epoch == 1
    assert sampler.next_batch()[1][-1, -1].item() == 40


def test_sequential_tiny_corpus_cycles_windows():
    sampler = SequentialSampler(np.arange(21), batch_size=4, block_size=5)  # exactly one batch
    assert sampler.batches_per_epoch == 1
    x, y = sampler.next_batch()
    assert x[:, 0].tolist() == [0, 5, 10, 15] and torch.equal(y[:, :-1], x[:, 1:])
    tiny = SequentialSampler(np.arange(12), batch_size=4, block_size=5)  # 2 windows for 4 rows
    for expected_starts in ([0, 5, 0, 5], [0, 5, 0, 5]):
        x, y = tiny.next_batch()
        assert x[:, 0].tolist() == expected_starts and torch.equal(y, x + 1)
    assert tiny.epoch == pytest.approx(4.0)


@pytest.mark.parametrize("tokens", [TOKENS, np.arange(25, dtype=np.uint16)], ids=["normal", "tiny"])
def test_sequential_ranks_together_equal_one_process(tokens):
    single = SequentialSampler(tokens, batch_size=4, block_size=7)
    ranks = [SequentialSampler(tokens, batch_size=2, block_size=7, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == single.batches_per_epoch
    for _ in range(3 * single.batches_per_epoch + 1):
        x, y = single.next_batch()
        parts = [rank.next_batch() for rank in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
    assert ranks[1].epoch == single.epoch


def _resume_matches(make, tmp_path, taken=5, compared=7):
    original = make()
    for _ in range(taken):
        original.next_batch()
    torch.save(original.state_dict(), tmp_path / "state.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.epoch == original.epoch
    for _ in range(compared):
        (x1, y1), (x2, y2) = original.next_batch(), resumed.next_batch()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("kind", ["sequential", "random"])
def test_resume_continues_with_the_next_batch(kind, tmp_path):
    _resume_matches(lambda: make_sampler(kind, TOKENS, batch_size=3, block_size=50, seed=7, rank=1, world_size=2),
                    tmp_path)


def test_sequential_resume_with_other_batch_shape_is_refused():
    state = SequentialSampler(TOKENS, batch_size=4, block_size=10).state_dict()
    with pytest.raises(UserError, match="batch_size=4 but this run has batch_size=8"):
        SequentialSampler(TOKENS, batch_size=8, block_size=10).load_state_dict(state)


def test_resume_with_the_other_sampler_is_refused():
    state = SequentialSampler(TOKENS, batch_size=4, block_size=10).state_dict()
    with pytest.raises(UserError, match="not a random sampler's"):
        RandomSampler(TOKENS, batch_size=4, block_size=10, seed=0).load_state_dict(state)


def test_random_windows_are_valid_and_seeded():
    sampler = RandomSampler(TOKENS, batch_size=64, block_size=10, seed=1)
    x, y = sampler.next_batch()
    assert x.shape == (64, 10) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)  # arange tokens: every window is consecutive ids
    assert x.min() >= 0 and y.max() <= 999
    again = RandomSampler(TOKENS, batch_size=64, block_size=10, seed=1).next_batch()[0]
    other_seed = RandomSampler(TOKENS, batch_size=64, block_size=10, seed=2).next_batch()[0]
    assert torch.equal(x, again) and not torch.equal(x, other_seed)
    assert not torch.equal(x, sampler.next_batch()[0])
    assert sampler.epoch == pytest.approx(2 * 640 / 1000)


def test_random_ranks_differ():
    ranks = [RandomSampler(TOKENS, batch_size=8, block_size=10, seed=0, rank=r, world_size=2) for r in range(2)]
    assert not torch.equal(ranks[0].next_batch()[0], ranks[1].next_batch()[0])


def test_make_sampler_unknown_kind():
    with pytest.raises(UserError, match="choose sequential or random"):
        make_sampler("shuffled", TOKENS, 2, 10, seed=0)


def test_samplers_read_from_a_memmap(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefgh" * 10)
    tokens, _ = load_tokens(str(corpus), CharTokenizer("abcdefgh"))
    x, y = SequentialSampler(tokens, batch_size=2, block_size=8).next_batch()
    assert x.tolist() == [list(range(8))] * 2 and y[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 0]
    assert data.RandomSampler(tokens, batch_size=2, block_size=8, seed=0).next_batch()[0].shape == (2, 8)


def test_a_command_reads_and_hashes_its_corpus_once(tmp_path, monkeypatch):
    """Training reads the text once for the char tokenizer, the token cache and the run's record of it."""
    from conftest import tiny_char_config
    from gptforge.train.session import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n" * 300)
    reads = []
    real_read = data._read_utf8
    monkeypatch.setattr(data, "_read_utf8", lambda path: reads.append(path) or real_read(path))
    train(tiny_char_config(tmp_path / "run", data=str(corpus), max_steps=2, block_size=8, val_fraction=0.0))
    assert reads == [corpus]
    reads.clear()
    train(resume=tmp_path / "run", overrides={"max_steps": 3})
    assert reads == [corpus.resolve()]
