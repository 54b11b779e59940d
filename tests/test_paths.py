"""Where gptforge finds what it did not write: the data dir, the cache dir and GPT-2's ranks, in that order."""

import shutil
from pathlib import Path

import pytest
import tiktoken

from gptforge.errors import UserError
from gptforge.paths import GPT2_BPE_FILENAME, cache_dir, data_dir, find_gpt2_ranks, read_gpt2_ranks
from gptforge.tokenizer import GPT2Tokenizer


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An empty data dir, an empty cache dir and a folder of its own, each ready to hold a gpt2.tiktoken."""
    made = {name: tmp_path / name for name in ("data", "cache", "own")}
    for folder in made.values():
        folder.mkdir()
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(made["data"]))
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(made["cache"]))
    return made


def put_ranks(folder: Path, good: Path) -> Path:
    return Path(shutil.copyfile(good / GPT2_BPE_FILENAME, folder / GPT2_BPE_FILENAME))


def test_the_folders_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path / "c"))
    assert (data_dir(), cache_dir()) == (tmp_path / "d", tmp_path / "c")
    monkeypatch.delenv("GPTFORGE_DATA_DIR")
    monkeypatch.delenv("GPTFORGE_CACHE_DIR")
    assert data_dir() is None
    assert cache_dir() == Path("~/.cache/gptforge").expanduser()


def test_an_explicit_file_wins_then_the_data_dir_then_the_cache(folders: dict[str, Path], data_dir: Path) -> None:
    assert find_gpt2_ranks() is None  # nothing local: the tokenizer may let tiktoken download it
    in_cache = put_ranks(folders["cache"], data_dir)
    assert find_gpt2_ranks() == in_cache
    in_data = put_ranks(folders["data"], data_dir)
    assert find_gpt2_ranks() == in_data
    own = put_ranks(folders["own"], data_dir)
    assert find_gpt2_ranks(own) == own


def test_an_explicit_file_that_is_missing_is_refused_not_skipped(folders: dict[str, Path], data_dir: Path) -> None:
    put_ranks(folders["data"], data_dir)
    with pytest.raises(UserError, match="not found"):
        find_gpt2_ranks(folders["own"] / GPT2_BPE_FILENAME)


def test_a_bad_ranks_file_is_refused_naming_it(folders: dict[str, Path], data_dir: Path) -> None:
    bad = folders["data"] / GPT2_BPE_FILENAME
    bad.write_bytes((data_dir / GPT2_BPE_FILENAME).read_bytes()[:-100])  # truncated
    assert find_gpt2_ranks() == bad  # found first, so it must fail clearly rather than be passed over
    with pytest.raises(UserError, match="sha256 mismatch") as info:
        read_gpt2_ranks(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(UserError, match="sha256 mismatch"):
        GPT2Tokenizer()
    assert read_gpt2_ranks(data_dir / GPT2_BPE_FILENAME) == (data_dir / GPT2_BPE_FILENAME).read_bytes()


def test_the_tokenizer_remembers_which_file_its_ranks_came_from(folders: dict[str, Path], data_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    in_cache = put_ranks(folders["cache"], data_dir)
    assert GPT2Tokenizer().ranks_file == in_cache
    own = put_ranks(folders["own"], data_dir)
    assert GPT2Tokenizer(own).ranks_file == own
    in_cache.unlink()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: object())  # no network
    assert GPT2Tokenizer().ranks_file is None  # tiktoken's download: no local file for an export to copy
