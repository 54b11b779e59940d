"""The Hugging Face hub with the network refused: hub names and pushes fail in one line saying what to do.

The online paths (a download into huggingface_hub's cache, an upload) are a manual check (docs/interop.md)."""

import socket
from pathlib import Path

import pytest

from conftest import run_main
from gptforge.interop.hub import download_hint
from gptforge.paths import hf_download_command

huggingface_hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub comes with the hf and dev extras")
hub_constants = pytest.importorskip("huggingface_hub.constants")


def refuse_connections(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Every name lookup and connection attempt raises `error`."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    for owner, name in ((socket.socket, "connect"), (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network (a connection attempt fails the test), huggingface_hub in offline mode with an empty
    cache and no token, and a fresh working directory; returns that directory."""
    refuse_connections(monkeypatch, AssertionError("the network was used"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read once, when it was imported
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
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
    files = "config.json generation_config.json model.safetensors vocab.json merges.txt"
    assert err == (f"error: hf:{name}: no network; download it with `hf download {name} {files} "
                   f"--local-dir {local}` and pass hf:{local}\n")
    assert list(offline.iterdir()) == []  # no run directory


def test_every_download_hint_is_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The offline error, the empty --init-from error and the docs give one command, naming only the files read."""
    command = hf_download_command("gpt2")
    assert command == ("hf download gpt2 config.json generation_config.json model.safetensors vocab.json merges.txt "
                       "--local-dir gpt2")
    status, _, err = run_main(["train", "--preset", "shakespeare-finetune", "--init-from", "hf:"], capsys)
    assert status == 2 and f"`{command}`" in err
    assert f"`{command}`" in download_hint("gpt2")  # docs/interop.md gives it too (test_docs.py)


def test_a_missing_path_is_still_a_missing_folder_not_a_hub_name(offline: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for path in (str(offline / "gpt2"), "./gpt2", "models/../gpt2", "~/no-such-gpt2-folder"):
        status, _, err = run_main(["train", "--preset", "shakespeare-finetune", "--init-from", f"hf:{path}"],
                                  capsys)
        assert status == 2 and "model folder not found" in err, (path, err)


# --- export --push-to-hub -----------------------------------------------------------------------------------


def export_argv(run: Path, out: Path, fmt: str, repo: str = "someone/tiny-demo") -> list[str]:
    return ["export", "--run", str(run), "--format", fmt, "--out", str(out), "--push-to-hub", repo]


@pytest.mark.parametrize("fmt", ["hf", "space"])
def test_push_without_a_token_is_one_line_before_anything_is_exported(
        fmt: str, tiny_run: Path, offline: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # online as far as it knows: the token is missing
    status, _, err = run_main(export_argv(tiny_run, offline / "out", fmt), capsys)
    assert status == 2
    assert err == ("error: no Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write access, "
                   "then export again\n")
    assert list(offline.iterdir()) == []


@pytest.mark.parametrize("fmt", ["hf", "space"])
def test_push_in_offline_mode_is_one_line_before_anything_is_exported(
        fmt: str, tiny_run: Path, offline: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    status, _, err = run_main(export_argv(tiny_run, offline / "out", fmt), capsys)
    assert status == 2
    assert err == ("error: no network: HF_HUB_OFFLINE is set; export without --push-to-hub and upload the folder "
                   "later with `hf upload`\n")
    assert list(offline.iterdir()) == []


@pytest.mark.parametrize("fmt,repo_type", [("hf", "model"), ("space", "space")])
def test_push_with_the_network_refused_keeps_the_export_and_says_how_to_upload_it(
        fmt: str, repo_type: str, tiny_run: Path, offline: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    refuse_connections(monkeypatch, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    out = offline / "out"
    status, stdout, err = run_main(export_argv(tiny_run, out, fmt), capsys)
    assert status == 2 and f"wrote {out}" in stdout
    assert err.startswith("error: no network: cannot reach the Hugging Face hub (") and err.count("\n") == 1
    assert err.endswith(f"{out} is written; upload it later with `hf upload someone/tiny-demo {out} . "
                        f"--repo-type {repo_type}`\n")
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("repo", ["tiny-demo", "a/b/c", "someone/", "/abs/path"])
def test_push_needs_a_user_slash_name(repo: str, tiny_run: Path, offline: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(export_argv(tiny_run, offline / "out", "hf", repo), capsys)
    assert status == 2 and err == f"error: --push-to-hub takes USER/NAME (a hub repository id), got {repo!r}\n"


@pytest.mark.parametrize("argv,create,hardware", [
    (["--format", "space"], {"repo_type": "space", "space_sdk": "gradio", "space_hardware": "zero-a10g"},
     "zero-a10g"),
    (["--format", "space", "--hardware", "cpu-basic"],
     {"repo_type": "space", "space_sdk": "gradio", "space_hardware": "cpu-basic"}, "cpu-basic"),
    (["--format", "hf"], {"repo_type": "model", "space_sdk": None, "space_hardware": None}, None),
    (["--format", "static-space"], {"repo_type": "space", "space_sdk": "static", "space_hardware": None}, None),
])
def test_push_creates_the_repository_with_its_sdk_and_requests_the_hardware(
        argv: list[str], create: dict, hardware: str | None, tiny_run: Path, offline: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """huggingface_hub's calls recorded instead of made: what a push asks the hub for."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    calls = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/spaces/{repo_id}")
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: calls.append(("upload", kw["repo_id"])))
    monkeypatch.setattr(huggingface_hub, "request_space_hardware",
                        lambda repo_id, flavor: calls.append(("hardware", repo_id, flavor)))
    status, stdout, _ = run_main(["export", "--run", str(tiny_run), *argv, "--out", str(offline / "out"),
                                  "--push-to-hub", "someone/tiny-demo"], capsys)
    assert status == 0 and "pushed to https://huggingface.co/spaces/someone/tiny-demo" in stdout
    assert calls[0] == ("create", "someone/tiny-demo", {"exist_ok": True, **create})
    assert calls[1] == ("upload", "someone/tiny-demo")
    assert calls[2:] == ([("hardware", "someone/tiny-demo", hardware)] if hardware else [])
