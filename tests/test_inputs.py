"""What ``ddcolor.colorize`` does with the images users actually feed it.

Grey scans (1 channel), PNGs with transparency (4 channels), over-bright values from upstream nodes,
1-pixel images, empty batches, NaN from a broken upstream node, integer tensors from user scripts, odd
``input_size`` values. Good inputs must give sensible output of the right shape; bad ones a
:class:`ddcolor.InputImageError` that says which input is wrong and what to do.
"""

from __future__ import annotations

import re

import pytest
import torch

import ddcolor

SIZE = 64  # model input side for these tests: a multiple of 32, fast on CPU


@pytest.fixture(scope="module")
def model(tiny_weights):
    return ddcolor.load_model(tiny_weights)


def _images(b: int = 2, h: int = 40, w: int = 52, c: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=gen)


def _colorize(model, images, **kwargs):
    kwargs.setdefault("input_size", SIZE)
    return ddcolor.colorize(model, images, **kwargs)


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    return rgb.mean(dim=-1, keepdim=True).expand(*rgb.shape[:-1], 3).contiguous()


# --------------------------------------------------------------------------------------------------- good inputs


def test_rgb_batch_gives_coloured_rgb_of_the_same_size(model):
    images = _grey(_images())
    out = _colorize(model, images)
    assert out.shape == images.shape
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    # a grey input comes back coloured: the channels are no longer all equal
    assert (out[..., 0] - out[..., 2]).abs().mean() > 0.01


def test_one_by_one_image(model):
    images = torch.full((1, 1, 1, 3), 0.5)
    out = _colorize(model, images)
    assert out.shape == (1, 1, 1, 3)
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("shape", [(1, 1, 7, 3), (1, 9, 1, 3), (1, 3, 500, 3)])
def test_extreme_aspect_ratios(model, shape):
    out = _colorize(model, torch.rand(*shape, generator=torch.Generator().manual_seed(3)))
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_one_channel_grey_gives_three_channels_like_the_rgb_grey(model):
    rgb_grey = _grey(_images())
    one_channel = rgb_grey[..., :1].contiguous()
    out = _colorize(model, one_channel)
    assert out.shape == (*one_channel.shape[:-1], 3)
    torch.testing.assert_close(out, _colorize(model, rgb_grey), atol=1e-6, rtol=0)


def test_rgba_keeps_alpha_and_colorizes_rgb(model):
    rgb = _grey(_images())
    gen = torch.Generator().manual_seed(7)
    alpha = torch.rand(*rgb.shape[:-1], 1, generator=gen)
    alpha[:, :10] = 0.0  # fully transparent strip
    rgba = torch.cat([rgb, alpha], dim=-1)
    out = _colorize(model, rgba)
    assert out.shape == rgba.shape
    assert torch.equal(out[..., 3:], alpha), "the alpha channel changed"
    torch.testing.assert_close(out[..., :3], _colorize(model, rgb), atol=1e-6, rtol=0)


def test_values_outside_0_1_are_clipped_before_colorizing(model):
    images = _images() * 1.6 - 0.3  # about 30 % of the values below 0 or above 1
    assert (images < 0).any() and (images > 1).any()
    out = _colorize(model, images)
    assert out.min() >= 0.0 and out.max() <= 1.0
    torch.testing.assert_close(out, _colorize(model, images.clamp(0, 1)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_accepted(model, dtype):
    images = _images()
    out = _colorize(model, images.to(dtype))
    assert out.dtype == torch.float32
    assert out.shape == images.shape
    # the same colours as the same values given as float32
    torch.testing.assert_close(out, _colorize(model, images.to(dtype).float()), atol=1e-4, rtol=0)


def test_list_of_images_of_different_sizes(model):
    a = _images(1, 30, 44)
    b = _images(1, 50, 20, seed=1)
    out = _colorize(model, [a[0], b])  # (H,W,C) and (1,H,W,C) in one list
    assert len(out) == 2
    assert tuple(out[0].shape[-3:]) == (30, 44, 3)
    assert tuple(out[1].shape[-3:]) == (50, 20, 3)
    torch.testing.assert_close(out[0].reshape(1, 30, 44, 3), _colorize(model, a), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1].reshape(1, 50, 20, 3), _colorize(model, b), atol=1e-5, rtol=0)


def test_batch_size_does_not_change_the_colours(model):
    images = _images(5)
    one_call = _colorize(model, images, batch_size=4)
    torch.testing.assert_close(_colorize(model, images, batch_size=2), one_call, atol=1e-4, rtol=0)
    torch.testing.assert_close(_colorize(model, images[3:4], batch_size=1), one_call[3:4], atol=1e-4, rtol=0)


def test_input_is_not_modified(model):
    images = _images() * 1.6 - 0.3
    before = images.clone()
    _colorize(model, images)
    assert torch.equal(images, before)


# --------------------------------------------------------------------------------------------------- bad inputs


def _error(model, images, **kwargs) -> str:
    with pytest.raises(ddcolor.InputImageError) as err:
        _colorize(model, images, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(model, bad):
    images = _images(3)
    images[1, 5, 5, 0] = bad
    message = _error(model, images).lower()
    assert "nan" in message or "inf" in message or "finite" in message, message


def test_non_finite_error_names_which_image_in_a_list(model):
    bad = _images(1, seed=2)[0]
    bad[0, 0, 1] = float("nan")
    message = _error(model, [_images(1)[0], _images(1, seed=1)[0], bad])
    # third image: "image 3" (counting from 1) or "index 2" (counting from 0)
    assert re.search(r"\b[23]\b", message), message


def test_non_finite_error_names_which_image_in_a_batch(model):
    # batches of hundreds of photos: the user must learn which one is broken
    images = _images(6, 16, 16)
    images[4, 3, 3, 1] = float("nan")
    message = _error(model, images)
    # fifth image: "image 5" (counting from 1) or "[4]" / "index 4" (counting from 0)
    assert re.search(r"\b[45]\b", message), message


@pytest.mark.parametrize("shape", [(1, 0, 16, 3), (1, 16, 0, 3), (0, 16, 16, 3)])
def test_empty_images_are_refused(model, shape):
    message = _error(model, torch.zeros(shape))
    assert "0" in message, message


def test_empty_list_is_refused(model):
    _error(model, [])


@pytest.mark.parametrize("channels", [2, 5, 8])
def test_unsupported_channel_counts_are_refused(model, channels):
    message = _error(model, _images(c=channels))
    assert str(channels) in message, message


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool])
def test_non_float_dtype_is_refused(model, dtype):
    images = (_images() * 255).to(dtype)
    message = _error(model, images)
    assert str(dtype).replace("torch.", "") in message or "float" in message.lower(), message


@pytest.mark.parametrize("shape", [(16, 16), (16,), (1, 1, 16, 16, 3)])
def test_wrong_number_of_dimensions_is_refused(model, shape):
    _error(model, torch.rand(shape))


@pytest.mark.parametrize(("size", "nearest"), [(500, ("480", "512")), (100, ("96", "128")), (33, ("32", "64"))])
def test_input_size_not_a_multiple_of_32_names_the_nearest_valid_sizes(model, size, nearest):
    with pytest.raises(ValueError) as err:  # InputImageError is a ValueError
        _colorize(model, _images(1), input_size=size)
    message = str(err.value)
    assert str(size) in message, message
    for valid in nearest:
        assert valid in message, f"the error does not suggest {valid}: {message}"


@pytest.mark.parametrize("size", [0, -32])
def test_non_positive_input_size_is_refused(model, size):
    with pytest.raises(ValueError):
        _colorize(model, _images(1), input_size=size)
