"""Shared fixtures: a small 20news-bydate-style archive (see tests/small_archive.py)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.small_archive import build_archive


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~20 s (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small archive (20 groups, 6 train / 3 test posts each), built once per test session. Do not modify it."""
    return build_archive(tmp_path_factory.mktemp("small_archive") / "20news-bydate.tar.gz")


@pytest.fixture(scope="session")
def small_archive_sha256(small_archive: Path) -> str:
    """Its sha256, e.g. for `LSTM_VS_GRU_EXTRA_SHA256` or `corpus.read_archive(path, accepted={...})`."""
    return hashlib.sha256(small_archive.read_bytes()).hexdigest()
