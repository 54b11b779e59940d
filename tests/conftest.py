"""Shared fixtures: the offline data folder, and a private cache dir so tests never touch ~/.cache."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$GPTFORGE_DATA_DIR (CI) or the checkout's ../shared/data; failing, not skipping, when absent."""
    folder = Path(os.environ.get("GPTFORGE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (folder / "tinyshakespeare.txt").is_file():
        pytest.fail(f"test data not found in {folder}; set GPTFORGE_DATA_DIR to the shared data folder")
    return folder.resolve()


@pytest.fixture(autouse=True)
def isolated_dirs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the package at the offline data (so nothing downloads) and at a fresh cache per test."""
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
