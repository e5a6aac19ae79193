"""The options of ``ddcolor.colorize`` beyond the official behaviour change the output as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ddcolor
from ddcolor.colorspace import lab_to_linear_rgb, rgb_to_l
from ddcolor.pipeline import _nearest_index, model_input_geometry
from tests.test_parity import fixture_image


@pytest.fixture(scope="module")
def tiny(tiny_weights):
    return ddcolor.load_model(tiny_weights)


def chroma_of(images: torch.Tensor) -> np.ndarray:
    """Per-pixel chroma sqrt(a^2 + b^2) of (H, W, 3) RGB via OpenCV Lab."""
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(images.numpy()), cv2.COLOR_RGB2Lab)
    return np.hypot(lab[..., 1], lab[..., 2])


@pytest.mark.parametrize("size_in", [64, 128, 256, 512])
@pytest.mark.parametrize("size_out", [1, 3, 220, 300, 333, 511, 1000, 1023, 2999])
def test_nearest_index_matches_torch(size_in, size_out):
    src = torch.arange(size_in, dtype=torch.float32).view(1, 1, 1, size_in)
    expected = F.interpolate(src, size=(1, size_out), mode="nearest")[0, 0, 0].long().numpy()
    np.testing.assert_array_equal(_nearest_index(size_in, size_out), expected)


def test_bilinear_upsample_matches_torch(tiny):
    image = fixture_image()
    ab = ddcolor.predict_ab(tiny, ddcolor.prepare_input(image, 64))
    ours = ddcolor.merge_lab(image, ab, upsample="bilinear")
    up = F.interpolate(ab, size=image.shape[1:3], mode="bilinear", align_corners=False)[0].numpy()
    lightness = rgb_to_l(image[0].numpy())
    expected = ddcolor.colorspace.lab_to_rgb(lightness, up[0], up[1])
    assert np.abs(ours[0].numpy() - expected).max() < 1e-4


def test_keep_aspect_geometry():
    assert model_input_geometry(220, 300, 512, "keep_aspect") == ((384, 512), (375, 512))
    assert model_input_geometry(6000, 8000, 512, "keep_aspect") == ((384, 512), (384, 512))
    assert model_input_geometry(1000, 10, 256, "keep_aspect") == ((256, 32), (256, 3))
    assert model_input_geometry(220, 300, 512, "square") == ((512, 512), (512, 512))


def test_keep_aspect_does_not_stretch(tiny):
    image = fixture_image()  # 300 x 220
    mi = ddcolor.prepare_input(image, 256, resize_mode="keep_aspect")
    assert mi.x.shape == (1, 3, 192, 256) and mi.content_hw == (188, 256)
    # the padding repeats the last content row
    assert torch.equal(mi.x[0, :, 188:, :], mi.x[0, :, 187:188, :].expand(-1, 4, -1))
    ab = ddcolor.predict_ab(tiny, mi)
    assert ab.shape == (1, 2, 188, 256)
    out = ddcolor.colorize(tiny, image, input_size=256, resize_mode="keep_aspect")
    official = ddcolor.colorize(tiny, image, input_size=256)
    assert out.shape == official.shape == (1, 220, 300, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.abs(out - official).mean() > 1e-3  # a different (unstretched) prediction


def test_guided_upsample_follows_luminance_edges():
    """A coarse a* ramp across a sharp luminance edge: guided upsampling puts a colour step at the edge,
    bilinear only continues the ramp; far from the edge all modes agree."""
    import cv2

    image = torch.full((1, 256, 512, 3), 0.3)
    image[:, :, 256:] = 0.7  # luminance edge between x = 255 and 256
    ab = torch.zeros(1, 2, 32, 64)
    ab[:, 0] = torch.clamp((torch.arange(64) - 28) / 8.0, 0, 1) * 40  # a* ramps over 8 coarse pixels
    ab[:, 1] = 10.0

    def a_star(upsample: str) -> np.ndarray:
        out = ddcolor.merge_lab(image, ab, upsample=upsample)[0].numpy()
        return cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2Lab)[128, :, 1]

    guided, bilinear = a_star("guided"), a_star("bilinear")
    guided_step, bilinear_step = guided[256] - guided[255], bilinear[256] - bilinear[255]
    assert guided_step > 5.0 and guided_step > 5 * abs(bilinear_step), (guided_step, bilinear_step)
    for x, expected in ((100, 0.0), (400, 40.0)):
        assert abs(guided[x] - expected) < 1.0 and abs(bilinear[x] - expected) < 1.0


def test_chroma_scales_saturation_and_stays_in_gamut(tiny):
    image = fixture_image()
    base = ddcolor.colorize(tiny, image, input_size=128)[0]
    half = ddcolor.colorize(tiny, image, input_size=128, chroma=0.5)[0]
    grey = ddcolor.colorize(tiny, image, input_size=128, chroma=0.0)[0]
    boost = ddcolor.colorize(tiny, image, input_size=128, chroma=1.8)[0]
    c_base, c_half, c_boost = chroma_of(base), chroma_of(half), chroma_of(boost)
    assert chroma_of(grey).max() < 1.0  # chroma 0: neutral
    assert 0.4 < np.median(c_half) / np.median(c_base) < 0.6
    assert np.median(c_boost) > 1.2 * np.median(c_base)
    for out in (half, grey, boost):
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_chroma_boost_never_leaves_gamut():
    """Boosting only goes as far as the gamut edge: no pixel that was in gamut at 1.0 gets clipped."""
    rng = np.random.default_rng(0)
    lightness = rng.uniform(20, 80, (64, 64)).astype(np.float32)
    a = rng.uniform(-20, 20, (64, 64)).astype(np.float32)
    b = rng.uniform(-20, 20, (64, 64)).astype(np.float32)
    in_gamut = np.all((lab_to_linear_rgb(lightness, a, b) >= 0) & (lab_to_linear_rgb(lightness, a, b) <= 1), -1)
    factor = ddcolor.colorspace.gamut_bounded_scale(lightness, a, b, 3.0)
    boosted = lab_to_linear_rgb(lightness, a * factor, b * factor)
    assert np.all((boosted[in_gamut] >= -1e-3) & (boosted[in_gamut] <= 1 + 1e-3))
    assert (factor[in_gamut] > 1.5).mean() > 0.5  # and it does boost
    assert np.all(factor >= 1.0) and np.all(factor <= 3.0)


@pytest.mark.parametrize("size", [64, 96, 160, 320])
def test_any_multiple_of_32_works(tiny, size):
    out = ddcolor.colorize(tiny, fixture_image(), input_size=size)
    assert out.shape == (1, 220, 300, 3)


@pytest.mark.parametrize("size", [0, 31, 100, 513])
def test_other_sizes_are_refused_with_advice(tiny, size):
    with pytest.raises(ddcolor.InputImageError, match="multiple of 32"):
        ddcolor.colorize(tiny, fixture_image(), input_size=size)


def test_list_of_sizes_returns_same_sizes(tiny):
    items = [torch.rand(1, 40, 70, 3), torch.rand(2, 33, 33, 3), torch.rand(90, 20, 3)]
    seen = []
    out = ddcolor.colorize(tiny, items, input_size=64, progress=lambda done, total: seen.append((done, total)))
    assert [tuple(o.shape) for o in out] == [(1, 40, 70, 3), (2, 33, 33, 3), (90, 20, 3)]
    assert seen[-1] == (4, 4)


# measured on the synthetic tiny weights at 64 px (fixture photo): bf16 mean 0.69 / max 1.56,
# fp16 mean 0.046 / max 0.18 (|dab|; ab spans about -25..60). At 256 px bf16 is mean 0.17 / max 0.96.
HALF_TOLERANCE = {torch.bfloat16: (1.0, 3.0), torch.float16: (0.1, 0.5)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(tiny_weights, dtype):
    """The official code cannot run fp16 at all; ours runs end to end in the dtype asked for."""
    fp32 = ddcolor.load_model(tiny_weights)
    half = ddcolor.load_model(tiny_weights, dtype=dtype)
    assert all(p.dtype == dtype for p in half.parameters())
    x = ddcolor.prepare_input(fixture_image(), 64)
    ab32 = ddcolor.predict_ab(fp32, x)
    ab16 = ddcolor.predict_ab(half, x)
    assert ab16.dtype == torch.float32 and torch.isfinite(ab16).all()
    diff = (ab16 - ab32).abs()
    mean_tol, max_tol = HALF_TOLERANCE[dtype]
    assert diff.mean() < mean_tol and diff.max() < max_tol, (float(diff.mean()), float(diff.max()))


_MEMORY_PROBE = """
import resource, sys, torch, ddcolor
model = ddcolor.load_model(sys.argv[1])
image = torch.rand(1, 6000, 8000, 3)  # 48 MP, 576 MB per float copy
ddcolor.colorize(model, image[:, :64, :64], input_size=64)  # warm-up: allocator, threads
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = ddcolor.colorize(model, image, input_size=64, upsample=sys.argv[2])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
assert out.shape == (1, 6000, 8000, 3)
print(grown / (image.numel() * 4))
"""


@pytest.mark.parametrize("upsample", ["nearest", "guided"])
def test_8000x6000_photo_memory_is_bounded(tiny_weights, upsample):
    """Full-resolution work runs in row tiles: an 8000x6000 photo costs its output plus tiles, no copies."""
    import subprocess
    import sys

    repo_root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tiny_weights), upsample], cwd=repo_root,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    grown = float(run.stdout.strip().splitlines()[-1])  # in units of one full-size float copy
    assert grown < 1.4, f"peak grew by {grown:.2f} full-size copies"
