"""Deterministic synthetic DDColor weights (the recipe of the reference SPEC §7), for tests and benchmarks.

No real checkpoint can be downloaded in CI, so every test that needs a model builds one of these. Each tensor
depends only on its own key (key order never matters), and the bytes do not depend on the BLAS of the machine,
so the files are checked against published sha256 sums (``tests/data/weights_checksums_<variant>.json``).

Usage as a script::

    python -m tests.synthetic_weights tiny  /tmp/tiny.safetensors
    python -m tests.synthetic_weights large /tmp/large.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import zlib
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
# where generated weights are kept between runs (git ignores it); tests and benchmarks share it
WEIGHTS_CACHE = Path(os.environ.get("DDCOLOR_TEST_WEIGHTS", Path(__file__).resolve().parent / ".weights"))
VARIANTS = ("tiny", "large")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_EMBEDDING_TABLES = ("query_feat.weight", "query_embed.weight", "level_embed.weight")


def load_manifest(variant: str) -> dict:
    """The official state_dict manifest (every key, shape and dtype) of ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return json.loads((DATA_DIR / f"manifest_{variant}.json").read_text())


def _normal(key: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(shape)


def _exact_norm(values: np.ndarray) -> float:
    flat = values.ravel().tolist()
    return math.sqrt(math.fsum(x * x for x in flat))


def _tensor(key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Every rule except ``weight_u`` (which needs two other tensors)."""
    if key in ("mean", "std"):
        values = _IMAGENET_MEAN if key == "mean" else _IMAGENET_STD
        return np.asarray(values, dtype=np.float64).reshape(1, 3, 1, 1).astype(np.float32)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    if dtype != "float32":
        raise ValueError(f"{key}: unexpected dtype {dtype}")
    z = _normal(key, shape)
    if key.endswith(".weight_v"):
        value = z / _exact_norm(z)
    elif key.endswith(".running_mean"):
        value = 0.1 * z
    elif key.endswith(".running_var"):
        value = 1.0 + 0.5 * z * z
    elif key.endswith(".gamma"):
        value = 0.5 * z
    elif len(shape) == 1 and key.endswith(".weight"):
        value = 1.0 + 0.1 * z
    elif key.endswith("bias"):
        value = 0.02 * z
    elif key.endswith(_EMBEDDING_TABLES):
        value = z
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        scale = 2.0 if key.endswith("color_embed.layers.2.weight") else 1.0
        value = scale * z / math.sqrt(fan_in)
    else:
        raise ValueError(f"no synthetic-weight rule for {key} {shape}")
    return value.astype(np.float32)


def _spectral_u(weight_orig: np.ndarray, weight_v: np.ndarray) -> np.ndarray:
    w = weight_orig.astype(np.float64).reshape(weight_orig.shape[0], -1)
    v = weight_v.astype(np.float64).tolist()
    t = np.array([math.fsum(a * b for a, b in zip(row.tolist(), v, strict=True)) for row in w])
    return (t / _exact_norm(t)).astype(np.float32)


def make_state_dict(variant: str) -> dict[str, np.ndarray]:
    """All tensors of the official state_dict of ``variant``, in manifest order, as numpy arrays."""
    entries = load_manifest(variant)["state_dict"]
    made: dict[str, np.ndarray] = {}
    for key, shape, dtype in entries:
        if not key.endswith(".weight_u"):
            made[key] = _tensor(key, tuple(shape), dtype)
    for key, _shape, _dtype in entries:
        if key.endswith(".weight_u"):
            base = key[: -len("_u")]
            made[key] = _spectral_u(made[base + "_orig"], made[base + "_v"])
    ordered = {key: made[key] for key, _shape, _dtype in entries}
    for key, shape, _dtype in entries:
        if list(ordered[key].shape) != list(shape):
            raise AssertionError(f"{key}: made {ordered[key].shape}, manifest says {shape}")
    return ordered


def write_safetensors(variant: str, path: str | Path) -> Path:
    """Write the synthetic weights of ``variant`` as a safetensors file (the reference file, byte for byte)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = make_state_dict(variant)
    # np.array (not ascontiguousarray): keeps the 0-d num_batches_tracked 0-d
    save_file(
        {key: np.array(value, order="C", copy=True) for key, value in state.items()},
        str(path),
        metadata={"scheme": f"ddcolor-synthetic-v1/{variant}"},
    )
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_weights(variant: str) -> Path:
    """Path of the synthetic ``variant`` weights in WEIGHTS_CACHE, generated once and checked against the
    published sha256 (a stale or damaged cached file is regenerated)."""
    expected = json.loads((DATA_DIR / f"weights_checksums_{variant}.json").read_text())["file_sha256"]
    path = WEIGHTS_CACHE / f"ddcolor_synthetic_{variant}.safetensors"
    if not path.exists() or file_sha256(path) != expected:
        tmp = path.with_suffix(".tmp")
        write_safetensors(variant, tmp)
        if file_sha256(tmp) != expected:
            tmp.unlink()
            raise AssertionError(f"synthetic {variant} weights do not match the published sha256 {expected}")
        tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    write_safetensors(args.variant, args.out)
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
