"""The Hugging Face hub, through huggingface_hub: fetch a GPT-2 by its hub name (`--init-from hf:gpt2`)
and publish an export (`export --push-to-hub USER/NAME`).

Downloads land in huggingface_hub's own cache ($HF_HOME), so a second run reads them from disk. The
network and a token are the user's business: without them the answer is one line saying what to do
instead, never a traceback from deep inside an HTTP client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from gptforge.errors import UserError
from gptforge.paths import hf_download_command

# `gpt2`, `openai-community/gpt2`: a hub repository id, as opposed to a path on this machine
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# what read_hf_folder needs: the config, the weights (safetensors first) and the tokenizer's files
MODEL_FILES = ["config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer*.json"]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class HubTarget:
    """What `--push-to-hub` creates: a model repository, or a Space with its SDK and hardware."""

    repo_type: str
    space_sdk: str | None = None
    space_hardware: str | None = None  # huggingface_hub's SpaceHardware value


def _huggingface_hub(purpose: str) -> ModuleType:
    try:
        import huggingface_hub.constants  # a lazy package: its submodules appear only once imported
        import huggingface_hub.errors
    except ImportError:
        raise UserError(f"{purpose} needs huggingface_hub: pip install 'gptforge[hf]'") from None
    return huggingface_hub


def is_hub_name(spec: str) -> bool:
    """A repository id that names no folder here: `hf:gpt2` is the local folder gpt2 when there is one."""
    return REPO_ID.fullmatch(spec) is not None and not Path(spec).expanduser().exists()


def download_hint(repo_id: str) -> str:
    return f"download it with `{hf_download_command(repo_id)}` and pass hf:{repo_id.rsplit('/', 1)[-1]}"


def fetch_model(repo_id: str) -> Path:
    """The folder of hub model `repo_id` in huggingface_hub's cache, downloading what is missing."""
    hub = _huggingface_hub(f"--init-from hf:{repo_id} (a hub name)")
    errors = hub.errors
    try:
        folder = Path(hub.snapshot_download(repo_id, allow_patterns=[*MODEL_FILES, WEIGHT_FILES[0]]))
        if not (folder / WEIGHT_FILES[0]).is_file():  # an older repository: pytorch_model.bin only
            folder = Path(hub.snapshot_download(repo_id, allow_patterns=[*MODEL_FILES, WEIGHT_FILES[1]]))
    except errors.LocalEntryNotFoundError:  # offline, or the hub unreachable, and nothing in the cache
        raise UserError(f"hf:{repo_id}: no network; {download_hint(repo_id)}") from None
    except errors.HfHubHTTPError as exc:  # no such repository, a gated one, a server error
        raise UserError(f"hf:{repo_id}: no such folder here, and the hub refused it ({first_line(exc)})") from None
    return folder


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: libraries' messages run to paragraphs."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _is_network_failure(exc: BaseException) -> bool:
    """Offline mode, or the HTTP client failing to connect (its error classes are not re-exported)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, OSError) or bool(names & {"NetworkError", "TransportError", "TimeoutException"})


def check_can_push(repo_id: str) -> None:
    """Refuse a push that cannot work before anything is exported: a bad name, offline mode, no token."""
    hub = _huggingface_hub("--push-to-hub")
    if REPO_ID.fullmatch(repo_id) is None or "/" not in repo_id:
        raise UserError(f"--push-to-hub takes USER/NAME (a hub repository id), got {repo_id!r}")
    if hub.constants.HF_HUB_OFFLINE:
        raise UserError("no network: HF_HUB_OFFLINE is set; export without --push-to-hub and upload the folder "
                        "later with `hf upload`")
    if hub.get_token() is None:
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write "
                        "access, then export again")


def push_folder(folder: Path, repo_id: str, target: HubTarget) -> str:
    """Upload `folder` as the hub repository `repo_id` (a model, or a Space with its SDK), creating it if
    needed, and ask for the Space's hardware (again, for a Space that already existed); returns its address."""
    hub = _huggingface_hub("--push-to-hub")
    later = (f"{folder} is written; upload it later with `hf upload {repo_id} {folder} . "
             f"--repo-type {target.repo_type}`")
    try:
        url = hub.create_repo(repo_id, repo_type=target.repo_type, exist_ok=True, space_sdk=target.space_sdk,
                              space_hardware=target.space_hardware)
        hub.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=target.repo_type,
                          commit_message="Upload from gptforge export")
        if target.space_hardware is not None:
            hub.request_space_hardware(repo_id, target.space_hardware)
    except hub.errors.HfHubHTTPError as exc:  # a refused token, a name taken by someone else
        raise UserError(f"the hub refused the push to {repo_id} ({first_line(exc)}); {later}") from None
    except Exception as exc:
        if not _is_network_failure(exc):
            raise
        raise UserError(f"no network: cannot reach the Hugging Face hub ({first_line(exc)}); {later}") from None
    return str(url)
