"""Numbers against the official DDColor (reference outputs of the official code on the same weights/input)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import ddcolor
from tests.synthetic_weights import DATA_DIR

FIXTURES = DATA_DIR / "fixtures"


def fixture_image() -> torch.Tensor:
    """fixture_input.png as ComfyUI would load it: (1, H, W, 3) float32 RGB, uint8 / 255."""
    bgr = cv2.imread(str(DATA_DIR / "fixture_input.png"), cv2.IMREAD_COLOR)
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1]).astype(np.float32) / 255.0)[None]


def reference_png(variant: str, size: int) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(FIXTURES / f"out_{variant}_{size}.png"))[..., ::-1])


@pytest.fixture(scope="module")
def models(tiny_weights, large_weights):
    return {"tiny": ddcolor.load_model(tiny_weights), "large": ddcolor.load_model(large_weights)}


@pytest.mark.parametrize("size", [256, 512])
def test_model_input_matches_official(size):
    mi = ddcolor.prepare_input(fixture_image(), size)
    reference = np.load(FIXTURES / f"model_input_{size}.npy")
    assert mi.x.shape == (1, 3, size, size)
    assert mi.content_hw == (size, size)
    np.testing.assert_allclose(mi.x[0].numpy(), reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["tiny", "large"])
@pytest.mark.parametrize("size", [256, 512])
def test_network_matches_official_ab(models, variant, size):
    x = torch.from_numpy(np.load(FIXTURES / f"model_input_{size}.npy"))[None]
    reference = np.load(FIXTURES / f"ab_{variant}_{size}.npy")
    ab = ddcolor.predict_ab(models[variant], x)[0].numpy()
    diff = np.abs(ab - reference)
    assert diff.max() <= 2e-3, f"max |dab| {diff.max():.2e}"
    assert diff.mean() <= 1e-4, f"mean |dab| {diff.mean():.2e}"


@pytest.mark.parametrize("variant", ["tiny", "large"])
@pytest.mark.parametrize("size", [256, 512])
def test_end_to_end_matches_official_png(models, variant, size):
    out = ddcolor.colorize(models[variant], fixture_image(), input_size=size)
    assert out.shape == (1, 220, 300, 3)
    ours = np.round(out[0].numpy() * np.float32(255.0)).astype(np.uint8)
    diff = np.abs(ours.astype(np.int16) - reference_png(variant, size))
    assert diff.max() <= 1
    assert (diff > 0).mean() <= 1e-3, f"{(diff > 0).mean():.4%} of values differ"


def test_full_resolution_lightness_is_kept(models):
    """The output's L is the photo's own L (only chroma comes from the prediction)."""
    out = ddcolor.colorize(models["tiny"], fixture_image(), input_size=256)[0].numpy()
    lightness = ddcolor.colorspace.rgb_to_l(out)
    reference = np.load(FIXTURES / "orig_L.npy")
    # where no channel was clipped to the gamut edge, L survives the Lab -> RGB -> Lab round trip
    unclipped = np.all((out > 1e-3) & (out < 1 - 1e-3), axis=-1)
    assert unclipped.mean() > 0.2
    error = np.abs(lightness - reference)[unclipped]
    assert np.percentile(error, 99) < 0.3, np.percentile(error, [50, 99])


def test_batch_equals_single_images(models):
    image = fixture_image()
    batch = torch.cat([image, image.flip(2), 1.0 - image])
    together = ddcolor.colorize(models["tiny"], batch, input_size=256, batch_size=3)
    for i in range(3):
        alone = ddcolor.colorize(models["tiny"], batch[i : i + 1], input_size=256)
        assert torch.abs(together[i] - alone[0]).max() <= 2 / 255
