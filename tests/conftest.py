"""Fixtures shared by every test: synthetic weights (cached outside git) and the reference data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic_weights import DATA_DIR, cached_weights


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    return cached_weights("tiny")


@pytest.fixture(scope="session")
def large_weights() -> Path:
    return cached_weights("large")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR
