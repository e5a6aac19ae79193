"""The synthetic-weight recipe (tests/synthetic_weights.py) reproduces the published checksums.

Every model test in this suite runs on these weights instead of a real checkpoint, so if the recipe drifts
(a rule changed, a numpy upgrade changed the random stream, a key renamed) every numerical comparison against
the reference fixtures would silently compare a different network. These tests pin the recipe to the
sums published with the reference (``tests/data/weights_checksums_<variant>.json``):

* per tensor: the first 32 hex digits (128 bits) of sha256 over the raw little-endian C-order bytes, and the
  float64 sum of the values;
* the whole ``.safetensors`` file's sha256 (the file the tests and benchmarks load).
"""

from __future__ import annotations

import hashlib
import json
import math
import random

import numpy as np
import pytest

from tests.synthetic_weights import DATA_DIR, load_manifest, make_state_dict, write_safetensors

# The json 'note' says "sha256 of each tensor's raw little-endian bytes (C order)"; the stored digests are
# 32 hex characters long, i.e. the first half of the sha256 hex digest.
DIGEST_HEX_CHARS = 32


def _checksums(variant: str) -> dict:
    return json.loads((DATA_DIR / f"weights_checksums_{variant}.json").read_text())


def _tensor_digest(value: np.ndarray) -> str:
    raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes(order="C")
    return hashlib.sha256(raw).hexdigest()[:DIGEST_HEX_CHARS]


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tiny_made() -> dict[str, np.ndarray]:
    return make_state_dict("tiny")


def _compare_tensors(variant: str, made: dict[str, np.ndarray]) -> None:
    published = _checksums(variant)
    assert "little-endian" in published["note"] and "C order" in published["note"], published["note"]
    expected = published["tensors"]
    manifest = load_manifest(variant)

    # same keys, in the official order, with the official shapes and dtypes
    assert list(made) == [key for key, _shape, _dtype in manifest["state_dict"]]
    assert set(made) == set(expected)
    assert len(made) == manifest["num_state_dict_entries"]
    for key, shape, dtype in manifest["state_dict"]:
        assert list(made[key].shape) == list(shape), key
        assert str(made[key].dtype) == dtype, key
    assert sum(int(v.size) for v in made.values()) == manifest["state_dict_numel"]

    wrong_digest = [key for key, value in made.items() if _tensor_digest(value) != expected[key]["sha256"]]
    assert not wrong_digest, f"{len(wrong_digest)} tensors differ from the published bytes, e.g. {wrong_digest[:5]}"

    wrong_sum = [
        key
        for key, value in made.items()
        if not math.isclose(math.fsum(value.astype(np.float64).ravel().tolist()), expected[key]["sum"],
                            rel_tol=1e-9, abs_tol=1e-9)
    ]
    assert not wrong_sum, f"sums differ for {wrong_sum[:5]}"


def test_tiny_tensors_match_published_checksums(tiny_made):
    _compare_tensors("tiny", tiny_made)


def test_tiny_file_matches_published_sha256(tmp_path):
    path = write_safetensors("tiny", tmp_path / "tiny.safetensors")
    assert _file_sha256(path) == _checksums("tiny")["file_sha256"]


def test_tiny_file_is_what_the_shared_fixture_serves(tiny_weights):
    # the cached file every other test loads is the published one (not a stale cache from an old recipe)
    assert _file_sha256(tiny_weights) == _checksums("tiny")["file_sha256"]


def test_large_tensors_match_published_checksums():
    _compare_tensors("large", make_state_dict("large"))


def test_large_file_matches_published_sha256(large_weights):
    # the fixture regenerates the file when the cache is missing or stale; hash what it serves independently
    assert _file_sha256(large_weights) == _checksums("large")["file_sha256"]


def test_spectral_u_is_the_normalised_power_iteration_of_its_layer(tiny_made):
    """Rule 4: weight_u = W v / ||W v|| — so the stored sigma (u . W v) is positive and equals ||W v||."""
    made = tiny_made
    u_keys = [key for key in made if key.endswith(".weight_u")]
    assert u_keys
    for key in u_keys:
        base = key[: -len("_u")]
        w = made[base + "_orig"].astype(np.float64).reshape(made[base + "_orig"].shape[0], -1)
        v = made[base + "_v"].astype(np.float64)
        wv = w @ v
        np.testing.assert_allclose(made[key], wv / np.linalg.norm(wv), rtol=1e-5, atol=1e-7)
        assert float(made[key].astype(np.float64) @ wv) > 0
        assert abs(np.linalg.norm(v) - 1.0) < 1e-6


def test_each_tensor_depends_only_on_its_key(monkeypatch, tiny_made):
    """Generating the manifest in another order gives the same tensors (the recipe is per key)."""
    manifest = load_manifest("tiny")
    entries = list(manifest["state_dict"])
    random.Random(0).shuffle(entries)
    shuffled = dict(manifest, state_dict=entries)

    made = tiny_made
    import tests.synthetic_weights as sw

    monkeypatch.setattr(sw, "load_manifest", lambda variant: shuffled)
    made_shuffled = sw.make_state_dict("tiny")
    assert list(made_shuffled) != list(made)
    for key, value in made.items():
        assert made_shuffled[key].tobytes() == value.tobytes(), key


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        load_manifest("medium")
