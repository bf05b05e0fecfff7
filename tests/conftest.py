"""Shared fixtures: a small 20news-bydate-style archive (see tests/small_archive.py), a private cache of XLA's
compiled programs for the test run, and the native ops required (built once per machine, in the user's cache,
as the stages build them)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import pytest

from lstm_vs_gru.fused.compile_cache import CACHE_ENV
from lstm_vs_gru.fused.native_ops import NATIVE_ENV
from tests.small_archive import build_archive


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~20 s (deselect with -m 'not slow')")


@pytest.fixture(scope="session", autouse=True)
def test_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For the tests, the training stages they run and their subprocesses: XLA's compilation cache in a folder
    of this test run, not the user's ~/.cache; and the native ops required (a compiler that fails to build
    them fails the tests instead of falling back), unless the user chose otherwise."""
    settings = {CACHE_ENV: str(tmp_path_factory.mktemp("xla_cache")),
                NATIVE_ENV: os.environ.get(NATIVE_ENV, "required")}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small archive (20 groups, 6 train / 3 test posts each), built once per test run. Do not modify it."""
    return build_archive(tmp_path_factory.mktemp("small_archive") / "20news-bydate.tar.gz")


@pytest.fixture(scope="session")
def small_archive_sha256(small_archive: Path) -> str:
    """Its sha256, e.g. for `LSTM_VS_GRU_EXTRA_SHA256` or `corpus.read_archive(path, accepted={...})`."""
    return hashlib.sha256(small_archive.read_bytes()).hexdigest()
