"""The Hugging Face hub with the network refused: hub names and pushes fail in one line saying what to do.

The online paths (a download into huggingface_hub's cache, an upload) are a manual check (README)."""

import socket
from pathlib import Path

import pytest

from conftest import run_main

huggingface_hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub comes with the hf and dev extras")
hub_constants = pytest.importorskip("huggingface_hub.constants")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network (a connection attempt fails the test), huggingface_hub in offline mode with an empty
    cache and no token, and a fresh working directory; returns that directory."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read once, when it was imported
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("name,local", [("gpt2", "gpt2"), ("openai-community/gpt2", "gpt2"),
                                        ("someone/tiny-gpt.v2", "tiny-gpt.v2")])
def test_init_from_a_hub_name_offline_is_one_line_saying_how_to_download_it(
        name: str, local: str, offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(["train", "--preset", "shakespeare-finetune", "--init-from", f"hf:{name}",
                               "--out", str(offline / "run")], capsys)
    assert status == 2
    assert err == (f"error: hf:{name}: no network; download it with `huggingface-cli download {name} "
                   f"--local-dir {local}` and pass hf:{local}\n")
    assert list(offline.iterdir()) == []  # no run directory


def test_a_missing_path_is_still_a_missing_folder_not_a_hub_name(offline: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for path in (str(offline / "gpt2"), "./gpt2", "models/../gpt2", "~/no-such-gpt2-folder"):
        status, _, err = run_main(["train", "--preset", "shakespeare-finetune", "--init-from", f"hf:{path}"],
                                  capsys)
        assert status == 2 and "model folder not found" in err, (path, err)
