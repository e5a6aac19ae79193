"""Fixtures shared by every test: synthetic weights (cached outside git) and the reference data."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.synthetic_weights import DATA_DIR, write_safetensors

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_CACHE = Path(os.environ.get("DDCOLOR_TEST_WEIGHTS", REPO_ROOT / "tests" / ".weights"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def synthetic_weights(variant: str) -> Path:
    """Path of the synthetic ``variant`` weights, generated once and checked against the published sha256."""
    expected = json.loads((DATA_DIR / f"weights_checksums_{variant}.json").read_text())["file_sha256"]
    path = WEIGHTS_CACHE / f"ddcolor_synthetic_{variant}.safetensors"
    if not path.exists() or _sha256(path) != expected:
        tmp = path.with_suffix(".tmp")
        write_safetensors(variant, tmp)
        if _sha256(tmp) != expected:
            tmp.unlink()
            raise AssertionError(f"synthetic {variant} weights do not match the published sha256 {expected}")
        tmp.replace(path)
    return path


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    return synthetic_weights("tiny")


@pytest.fixture(scope="session")
def large_weights() -> Path:
    return synthetic_weights("large")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR
