"""Where gptforge looks for files it did not write into a run: the data dir, the cache dir, GPT-2's ranks.

One place for the lookup order (an explicit path, then ``$GPTFORGE_DATA_DIR``, then the cache), so the
tokenizer, the dataset finder and the Space export never disagree on which file counts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gptforge.errors import UserError
from gptforge.fileio import atomic_write_bytes

GPT2_BPE_FILENAME = "gpt2.tiktoken"
GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# The files of a transformers GPT-2 that gptforge reads (not the whole repository, which holds several GB of
# other formats): what every hint that says how to download one names.
HF_DOWNLOAD_FILES = ("config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt")


def hf_download_command(repo_id: str) -> str:
    """The one command every message and page gives for fetching a hub GPT-2 by hand: `hf` is huggingface_hub's
    command (releases before 1.0 called it huggingface-cli), into a folder named like the model."""
    local = repo_id.rsplit("/", 1)[-1]
    return f"hf download {repo_id} {' '.join(HF_DOWNLOAD_FILES)} --local-dir {local}"


def cache_dir() -> Path:
    """Downloads and token caches: ``$GPTFORGE_CACHE_DIR`` or ~/.cache/gptforge."""
    return Path(os.environ.get("GPTFORGE_CACHE_DIR") or "~/.cache/gptforge").expanduser()


def data_dir() -> Path | None:
    """``$GPTFORGE_DATA_DIR``: a folder searched first for datasets and tokenizer files."""
    folder = os.environ.get("GPTFORGE_DATA_DIR")
    return Path(folder).expanduser() if folder else None


def local_folders() -> list[Path]:
    """The folders searched for a file gptforge would otherwise download, in order: offline machines and CI
    put their copies in the data dir, downloads land in the cache."""
    return [folder for folder in (data_dir(), cache_dir()) if folder is not None]


def find_gpt2_ranks(explicit: str | Path | None = None) -> Path | None:
    """The local gpt2.tiktoken to use: ``explicit`` (which must exist), else the first in the local folders;
    None when there is none, so the caller may let tiktoken download it."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"GPT-2 tokenizer file not found: {path}; pass the path of a gpt2.tiktoken file")
        return path
    return next((folder / GPT2_BPE_FILENAME for folder in local_folders()
                 if (folder / GPT2_BPE_FILENAME).is_file()), None)


def read_gpt2_ranks(path: Path) -> bytes:
    """The file's bytes, refused unless they are GPT-2's ranks: a wrong or truncated file must fail clearly,
    not tokenize subtly differently."""
    try:
        contents = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the GPT-2 tokenizer file {path}: {exc.strerror}") from None
    if hashlib.sha256(contents).hexdigest() != GPT2_BPE_SHA256:
        raise UserError(
            f"{path} is not GPT-2's BPE ranks file (sha256 mismatch: wrong or corrupt file); "
            f"replace it with a good copy of {GPT2_BPE_FILENAME} (sha256 {GPT2_BPE_SHA256})"
        )
    return contents


def keep_gpt2_ranks(contents: bytes) -> Path | None:
    """Keep verified GPT-2 ranks in the cache, where every later command finds them without --tokenizer-file:
    the cached file, or None when the cache cannot be written (the ranks given still serve this command)."""
    if hashlib.sha256(contents).hexdigest() != GPT2_BPE_SHA256:
        return None
    target = cache_dir() / GPT2_BPE_FILENAME
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, contents)
    except (OSError, UserError):
        return None
    return target
