import errno
import os
import pathlib
import pickle
import random
import re

import numpy as np
import pytest
import torch

from gptforge import checkpoint, fileio
from gptforge.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from gptforge.errors import UserError
from gptforge.fileio import atomic_write_bytes, atomic_write_text


def make_state(step: int = 7) -> dict:
    torch.manual_seed(step)
    return {
        "model": {"weight": torch.randn(4, 3), "bias": torch.zeros(3, dtype=torch.bfloat16)},
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 1e-3, "name": "decay"}]},
        "step": step,
        "best_val_loss": 1.25,
        "config": {"preset": "tiny", "train": {"schedule": "cosine", "target_loss": None}},
        "rng": capture_rng_state(),
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def no_temporaries(directory: pathlib.Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# --- save / load ---------------------------------------------------------------------------------


def test_round_trip_keeps_every_kind_of_value(tmp_path):
    state = make_state()
    written = save_checkpoint(state, tmp_path / "last.pt")
    assert written == tmp_path / "last.pt"
    loaded = load_checkpoint(written)
    assert loaded.pop("format") == CHECKPOINT_FORMAT
    assert_same(state, loaded)
    assert "format" not in state  # the caller's dict is not modified
    assert no_temporaries(tmp_path)


def test_gzip_round_trip_appends_suffix_and_detects_by_magic(tmp_path):
    state = make_state()
    written = save_checkpoint(state, tmp_path / "last.pt", compress=True)
    assert written.name == "last.pt.gz"
    assert written.read_bytes()[:2] == b"\x1f\x8b"
    assert save_checkpoint(state, tmp_path / "x.pt.gz", compress=True).name == "x.pt.gz"
    disguised = tmp_path / "plain-name.pt"
    disguised.write_bytes(written.read_bytes())  # gzip content without the .gz suffix
    for path in (written, disguised):
        loaded = load_checkpoint(path)
        loaded.pop("format")
        assert_same(state, loaded)


def test_atomic_write_text_replaces_whole_file(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert no_temporaries(tmp_path)


def test_atomic_write_uses_a_hidden_temporary_in_the_same_directory(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(source, target):
        seen.append(pathlib.Path(source))
        real_replace(source, target)

    monkeypatch.setattr(fileio.os, "replace", spy)
    atomic_write_bytes(tmp_path / "data.bin", b"abc")
    (temporary,) = seen
    assert temporary.parent == tmp_path and temporary.name.startswith(".") and temporary.name.endswith(".tmp")


@pytest.mark.parametrize("failing", ["os.replace", "torch.save"])
@pytest.mark.parametrize("compress", [False, True])
def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch, failing, compress):
    path = save_checkpoint(make_state(1), tmp_path / "last.pt", compress=compress)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "os.replace":
        monkeypatch.setattr(fileio.os, "replace", disk_full)
    else:
        monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(UserError) as raised:
        save_checkpoint(make_state(2), tmp_path / "last.pt", compress=compress)
    message = str(raised.value)
    assert str(path) in message and "No space left on device" in message and "intact" in message
    assert "\n" not in message
    assert path.read_bytes() == before
    assert no_temporaries(tmp_path)


def test_disk_full_inside_torch_save_is_reported_with_its_reason(tmp_path, monkeypatch):
    """torch.save turns a failed write into a RuntimeError; the OSError behind it must still be named."""
    real_fdopen = os.fdopen

    class FullDisk:
        """Takes a few writes, then the disk is full (torch only wraps errors after its first write)."""

        def __init__(self, file):
            self.file = file
            self.writes_left = 3

        def write(self, data):
            self.writes_left -= 1
            if self.writes_left < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(fileio.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(UserError, match="No space left on device") as raised:
        save_checkpoint(make_state(), tmp_path / "last.pt")
    assert isinstance(raised.value.__cause__, RuntimeError)  # the wrapped case really happened
    assert list(tmp_path.iterdir()) == []


def test_unexpected_runtime_error_is_not_disguised_as_a_user_error(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(checkpoint.torch, "save", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        save_checkpoint(make_state(), tmp_path / "last.pt")
    assert no_temporaries(tmp_path)


def bad_files(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    good = save_checkpoint(make_state(), tmp_path / "good.pt").read_bytes()
    gzipped = save_checkpoint(make_state(), tmp_path / "good.pt", compress=True).read_bytes()
    contents = {
        "empty.pt": b"",
        "truncated.pt": good[: len(good) // 2],
        "truncated-end.pt": good[:-10],
        "truncated.pt.gz": gzipped[: len(gzipped) // 2],
        "random.pt": np.random.default_rng(0).bytes(4096),
        "text.pt": b"hello, this is not a checkpoint\n",
    }
    files = {}
    for name, data in contents.items():
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    for name, value in {"list.pt": [1, 2], "no-model.pt": {"format": 1}, "no-format.pt": {"model": {}},
                        "future.pt": {"model": {}, "format": 99}}.items():
        files[name] = tmp_path / name
        torch.save(value, files[name])
    files["missing.pt"] = tmp_path / "missing.pt"
    files["directory.pt"] = tmp_path / "directory.pt"
    files["directory.pt"].mkdir()
    return files


def test_bad_files_give_one_line_user_errors_naming_the_file(tmp_path):
    for name, path in bad_files(tmp_path).items():
        with pytest.raises(UserError) as raised:
            load_checkpoint(path)
        message = str(raised.value)
        assert str(path) in message, name
        assert "\n" not in message and len(message) < 400, (name, message)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty.pt", "empty"), ("truncated.pt", "corrupt or truncated"), ("list.pt", "holds a list"),
     ("no-model.pt", "'model'"), ("no-format.pt", "'format'"), ("future.pt", "format 99"),
     ("missing.pt", "no such file"), ("truncated.pt.gz", "cannot read")],
)
def test_bad_files_say_what_is_wrong(tmp_path, name, reason):
    with pytest.raises(UserError, match=re.escape(reason)):
        load_checkpoint(bad_files(tmp_path)[name])


class Exploit:
    """Unpickling this would create a file: the stand-in for running any code."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_running(tmp_path, protocol):
    side_effect = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Exploit(side_effect), "format": 1}, protocol=protocol))
    with pytest.raises(UserError, match="evil.pt.*refused"):
        load_checkpoint(path)
    assert not side_effect.exists()
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)  # not even on a second try
    assert not side_effect.exists()


def test_malicious_torch_zip_is_refused_and_names_the_import(tmp_path):
    side_effect = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": Exploit(side_effect), "format": 1}, path)
    with pytest.raises(UserError, match=r"evil\.pt: it asks for \S*getattr .*could run code; refused"):
        load_checkpoint(path)
    assert not side_effect.exists()


# --- run directories -----------------------------------------------------------------------------


def draws() -> tuple:
    return torch.rand(5), random.random(), random.gauss(0, 1), np.random.rand(3)


def test_rng_state_survives_a_checkpoint_and_reproduces_draws(tmp_path):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.standard_normal()  # and in numpy's
    save_checkpoint({"model": {}, "rng": capture_rng_state()}, tmp_path / "last.pt")
    expected = draws()
    draws()  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    actual = draws()
    assert torch.equal(expected[0], actual[0])
    assert expected[1:3] == actual[1:3]
    assert np.array_equal(expected[3], actual[3])
