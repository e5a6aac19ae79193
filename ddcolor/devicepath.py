"""The full-resolution steps of the pipeline in torch, on any device (the model's GPU, or the CPU for tests).

The OpenCV path in :mod:`ddcolor.pipeline` is the official pipeline, exactly; it runs on the CPU. This module
does the same steps with torch tensors on the model's device, so a GPU never waits for the CPU:

* photo rows go up once (pinned host memory, non-blocking copies), in the dtype the caller gave;
* the network input: resize to the network size (bilinear without antialiasing, or area when
  ``keep_aspect`` shrinks), ``L``, neutral grey, edge padding;
* ``ab`` upsampling (nearest with PyTorch's legacy index arithmetic, bilinear, guided), chroma, Lab -> RGB;
* the result comes back once per tile (one tile for ordinary photos).

Everything at full resolution runs in row tiles of at most :data:`TILE_PIXELS` pixels (all photos of the
batch together), so a 48-megapixel scan needs its output plus a bounded working set on the device.

Colour maths: ``L`` uses the CIE formula (OpenCV's float RGB->Lab is a 33^3 lookup table instead, which
differs by up to 0.22 L*), Lab -> RGB is OpenCV's float formula. How far this path is from the official output
is measured in ``tests/test_devicepath.py`` and ``benchmarks/bench_gpu.py`` (README, "GPU").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputImageError

TILE_PIXELS = 1 << 23
"""Pixels (summed over the batch) per full-resolution tile on the device: 8 MP (8 photos of 1200x800 are one
tile); the working set of a tile is about 1 GB of float32 temporaries."""

PINNED_TRANSFERS = True
"""Copies between the CPU and a CUDA device go through pinned (page-locked) memory, non-blocking. False: plain
copies from / to pageable memory (the driver stages them). benchmarks/bench_gpu.py measures both."""

_XYZ_TO_RGB = ((3.240479, -1.53715, -0.498535), (-0.969256, 1.875991, 0.041556), (0.055648, -0.204043, 1.057311))
_WHITE = (0.950456, 1.0, 1.088754)
_RGB_TO_Y = (0.212671, 0.715160, 0.072169)
_GUIDED_RADIUS = 2
_GUIDED_EPS = 4e-4


# ------------------------------------------------------------------------------------------------ colour


def srgb_to_linear(x: Tensor) -> Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).pow(2.4))


def linear_to_srgb(x: Tensor) -> Tensor:
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308).pow(1.0 / 2.4) - 0.055)


def rgb_to_l(rgb: Tensor, dim: int = -1) -> Tensor:
    """L* (0..100) of RGB in 0..1 (channels along ``dim``), CIE formula with OpenCV's D65 coefficients."""
    r, g, b = srgb_to_linear(rgb).unbind(dim)
    y = r * _RGB_TO_Y[0] + g * _RGB_TO_Y[1] + b * _RGB_TO_Y[2]
    return torch.where(y > 0.008856, 116.0 * y.clamp_min(0.008856).pow(1.0 / 3.0) - 16.0, 903.3 * y)


def lab_to_rgb(lightness: Tensor, a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """RGB in 0..1 (stacked along ``dim``) from L*, a*, b*: OpenCV's float Lab -> RGB, clipped to the gamut."""
    l_thresh = 0.008856 * 903.3
    f_thresh = 7.787 * 0.008856 + 16.0 / 116.0
    low = lightness <= l_thresh
    fy = torch.where(low, 7.787 * (lightness / 903.3) + 16.0 / 116.0, (lightness + 16.0) / 116.0)
    y = torch.where(low, lightness / 903.3, fy * fy * fy)

    def finv(t: Tensor) -> Tensor:
        return torch.where(t <= f_thresh, (t - 16.0 / 116.0) / 7.787, t * t * t)

    x = finv(fy + a / 500.0) * _WHITE[0]
    z = finv(fy - b / 200.0) * _WHITE[2]
    channels = [linear_to_srgb((m[0] * x + m[1] * y + m[2] * z).clamp(0.0, 1.0)) for m in _XYZ_TO_RGB]
    return torch.stack(channels, dim=dim)


def grey_from_l(lightness: Tensor, dim: int = -1) -> Tensor:
    """The neutral grey RGB (R = G = B) with lightness ``L``: the network's input."""
    zero = torch.zeros_like(lightness)
    return lab_to_rgb(lightness, zero, zero, dim=dim)


def lab_to_linear_rgb(lightness: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Analytic CIE Lab -> linear sRGB (..., 3), not clipped (the gamut test of the chroma boost)."""
    fy = (lightness + 16.0) / 116.0
    delta = 6.0 / 29.0

    def finv(t: Tensor) -> Tensor:
        return torch.where(t > delta, t * t * t, 3.0 * delta * delta * (t - 4.0 / 29.0))

    y = torch.where(lightness > 8.0, fy * fy * fy, lightness / 903.3)
    x = finv(fy + a / 500.0) * _WHITE[0]
    z = finv(fy - b / 200.0) * _WHITE[2]
    return torch.stack([m[0] * x + m[1] * y + m[2] * z for m in _XYZ_TO_RGB], dim=-1)


def gamut_bounded_scale(lightness: Tensor, a: Tensor, b: Tensor, strength: float, steps: int = 12,
                        tol: float = 1e-4) -> Tensor:
    """Per-pixel factor in [1, strength] that keeps boosted (a, b) inside sRGB (as :mod:`ddcolor.colorspace`)."""
    def inside(t: Tensor) -> Tensor:
        rgb = lab_to_linear_rgb(lightness, a * t, b * t)
        return ((rgb >= -tol) & (rgb <= 1.0 + tol)).all(dim=-1)

    lo = torch.ones_like(lightness)
    hi = torch.full_like(lightness, strength)
    ok_hi = inside(hi)
    todo = ~ok_hi & inside(lo)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ok = inside(mid)
        lo = torch.where(todo & ok, mid, lo)
        hi = torch.where(todo & ~ok, mid, hi)
    return torch.where(ok_hi, hi.new_full((), strength), lo)


# ------------------------------------------------------------------------------------------------ geometry


def nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """PyTorch's legacy nearest: ``min(floor(dst * float32(in / out)), in - 1)``, the product in float32."""
    if size_out == 2 * size_in:
        return np.arange(size_out) >> 1
    scale = np.float32(size_in) / np.float32(size_out)
    idx = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, size_in - 1)


def linear_taps(size_in: int, size_out: int, start: int = 0, stop: int | None = None):
    """Half-pixel bilinear taps (align_corners=False, OpenCV INTER_LINEAR) for output positions start..stop."""
    dst = np.arange(start, size_out if stop is None else stop, dtype=np.float64)
    src = np.maximum((dst + 0.5) * (size_in / size_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def area_matrix(size_in: int, size_out: int, shrink_both: bool = True) -> np.ndarray:
    """(out, in) weights of OpenCV's INTER_AREA: when both axes shrink, each output pixel averages the source
    interval it covers (fractional coverage at the ends); otherwise OpenCV uses two-tap "area" weights on both
    axes (``fx = (dx + 1) - (sx + 1) / scale``, wrapped to 0..1), reproduced here."""
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    if not shrink_both:
        scale = size_in / size_out
        inv = size_out / size_in
        for dx in range(size_out):
            sx = math.floor(dx * scale)
            fx = (dx + 1) - (sx + 1) * inv
            fx = 0.0 if fx <= 0 else fx - math.floor(fx)
            if sx >= size_in - 1:
                sx, fx = size_in - 1, 0.0
            weights[dx, sx] += 1.0 - fx
            weights[dx, min(sx + 1, size_in - 1)] += fx
        return weights.astype(np.float32)
    scale = size_in / size_out
    for j in range(size_out):
        lo, hi = j * scale, (j + 1) * scale
        for i in range(int(math.floor(lo)), min(size_in, int(math.ceil(hi)))):
            weights[j, i] = min(hi, i + 1) - max(lo, i)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _reflect_index(n: int, radius: int) -> np.ndarray:
    """Indices of a BORDER_REFLECT (``fedcba|abcdef``) padding of ``radius`` on both sides."""
    idx = np.arange(-radius, n + radius)
    for _ in range(4):  # enough for radius <= 2 * n
        idx = np.where(idx < 0, -idx - 1, idx)
        idx = np.where(idx >= n, 2 * n - idx - 1, idx)
    return np.clip(idx, 0, n - 1)


def box_filter(x: Tensor, radius: int = _GUIDED_RADIUS) -> Tensor:
    """Mean over a (2r+1)^2 window, borders reflected as OpenCV's BORDER_REFLECT. x: (B, C, h, w)."""
    h, w = x.shape[-2:]
    rows = torch.as_tensor(_reflect_index(h, radius), device=x.device)
    cols = torch.as_tensor(_reflect_index(w, radius), device=x.device)
    padded = x.index_select(-2, rows).index_select(-1, cols)
    return F.avg_pool2d(padded, 2 * radius + 1, stride=1)


# ------------------------------------------------------------------------------------------------ source


class Source:
    """A batch of photos (CPU, (B, H, W, C), float (already validated) or uint8 0..255) and its rows on ``device``.

    If the whole batch fits in one tile it is uploaded once and kept for the resize and the merge; otherwise
    each step uploads the rows it needs. Rows come back as float32 RGB (B, r, W, 3) clipped to 0..1 (grey
    replicated, alpha dropped); :meth:`alpha` gives the alpha channel of rows.
    """

    def __init__(self, images: Tensor, device: torch.device, tile_pixels: int | None = None) -> None:
        tile_pixels = TILE_PIXELS if tile_pixels is None else tile_pixels
        self.images = images
        self.device = torch.device(device)
        self.shape = tuple(images.shape)
        b, h, w, _ = self.shape
        self.tile_rows = max(1, tile_pixels // max(1, b * w))
        self.resident = self._upload(images) if self.tile_rows >= h else None

    def _upload(self, part: Tensor) -> Tensor:
        if self.device.type == "cpu":
            return part
        if self.device.type == "cuda" and PINNED_TRANSFERS and not part.is_pinned():
            part = part.pin_memory()
        return part.to(self.device, non_blocking=True)

    @staticmethod
    def _float(raw: Tensor) -> Tensor:
        return raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()

    @classmethod
    def _rgb(cls, raw: Tensor) -> Tensor:
        raw = raw.expand(*raw.shape[:-1], 3) if raw.shape[-1] == 1 else raw[..., :3]
        return cls._float(raw).clamp(0.0, 1.0)

    def rows(self, r0: int, r1: int) -> Tensor:
        raw = self.resident[:, r0:r1] if self.resident is not None else self._upload(self.images[:, r0:r1])
        return self._rgb(raw)

    def gather_rows(self, index: np.ndarray) -> Tensor:
        """Source rows ``index`` (sorted, unique) as (B, n, W, 3)."""
        if self.resident is not None:
            return self._rgb(self.resident.index_select(1, torch.as_tensor(index, device=self.device)))
        return self._rgb(self._upload(self.images.index_select(1, torch.as_tensor(index))))

    def alpha(self, r0: int, r1: int) -> Tensor:
        raw = self.resident[:, r0:r1] if self.resident is not None else self._upload(self.images[:, r0:r1])
        return self._float(raw[..., 3])


def _resize_linear(source: Source, size_hw: tuple[int, int]) -> Tensor:
    """(B, h, w, 3) bilinear (no antialiasing) resize of the clipped RGB; only the rows it needs go up."""
    _, height, width, _ = source.shape
    h, w = size_hw
    y0, y1, wy = linear_taps(height, h)
    x0, x1, wx = linear_taps(width, w)
    needed, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    dev = source.device
    rows = source.gather_rows(needed)  # (B, n, W, 3)
    cols0, cols1 = torch.as_tensor(x0, device=dev), torch.as_tensor(x1, device=dev)
    wx_t = torch.as_tensor(wx, device=dev)[:, None]
    rows = rows.index_select(2, cols0) * (1 - wx_t) + rows.index_select(2, cols1) * wx_t  # (B, n, w, 3)
    i0 = torch.as_tensor(inverse[:h], device=dev)
    i1 = torch.as_tensor(inverse[h:], device=dev)
    wy_t = torch.as_tensor(wy, device=dev)[:, None, None]
    return rows.index_select(1, i0) * (1 - wy_t) + rows.index_select(1, i1) * wy_t


def _resize_area(source: Source, size_hw: tuple[int, int]) -> Tensor:
    """(B, h, w, 3) area-averaging resize of the clipped RGB, accumulated over row tiles (separable matmuls)."""
    b, height, width, _ = source.shape
    h, w = size_hw
    dev = source.device
    shrink_both = h <= height and w <= width
    wy = torch.as_tensor(area_matrix(height, h, shrink_both), device=dev)  # (h, H)
    wx = torch.as_tensor(area_matrix(width, w, shrink_both), device=dev)  # (w, W)
    acc = torch.zeros((b, 3, h, w), device=dev)
    for r0 in range(0, height, source.tile_rows):
        r1 = min(height, r0 + source.tile_rows)
        tile = source.rows(r0, r1).permute(0, 3, 1, 2)  # (B, 3, r, W)
        acc += torch.matmul(wy[:, r0:r1], torch.matmul(tile, wx.t()))
    return acc.permute(0, 2, 3, 1)


def network_input(source: Source, size_hw: tuple[int, int], padded_hw: tuple[int, int], area: bool) -> Tensor:
    """The grey network input (B, 3, Sh, Sw) float32 on the source's device, edge-padded to ``padded_hw``."""
    small = (_resize_area if area else _resize_linear)(source, size_hw)
    grey = grey_from_l(rgb_to_l(small), dim=1)  # (B, 3, h, w)
    pad_h, pad_w = padded_hw[0] - size_hw[0], padded_hw[1] - size_hw[1]
    if pad_h or pad_w:
        grey = F.pad(grey, (0, pad_w, 0, pad_h), mode="replicate")
    return grey.contiguous()


# ------------------------------------------------------------------------------------------------ merge


def _bilinear_rows(maps: Tensor, height: int, width: int, r0: int, r1: int, cols) -> Tensor:
    """Rows r0..r1 of ``maps`` (B, C, h, w) bilinearly resized to (B, C, r, width)."""
    y0, y1, wy = linear_taps(maps.shape[2], height, r0, r1)
    dev = maps.device
    wy_t = torch.as_tensor(wy, device=dev)[:, None]
    rows = (maps.index_select(2, torch.as_tensor(y0, device=dev)) * (1 - wy_t)
            + maps.index_select(2, torch.as_tensor(y1, device=dev)) * wy_t)
    x0, x1, wx = cols
    return rows.index_select(3, x0) * (1 - wx) + rows.index_select(3, x1) * wx


def _guided_coefficients(source: Source, ab: Tensor) -> Tensor:
    """(B, 4, h, w) = (A_a, A_b, B_a, B_b) of a fast guided filter with the photo's L as guide."""
    h, w = ab.shape[-2:]
    guide = rgb_to_l(_resize_area(source, (h, w)))[:, None] / 100.0  # (B, 1, h, w)
    mean_i = box_filter(guide)
    var_i = box_filter(guide * guide) - mean_i * mean_i
    mean_p = box_filter(ab)
    a = (box_filter(guide * ab) - mean_i * mean_p) / (var_i + _GUIDED_EPS)
    bias = mean_p - a * mean_i
    return torch.cat([box_filter(a), box_filter(bias)], dim=1)


def merge(source: Source, ab: Tensor, out: Tensor, *, upsample: str = "nearest", chroma: float = 1.0) -> Tensor:
    """Write ``Lab(L of the photo, upsampled ab) -> RGB`` into ``out`` (CPU (B, H, W, 3|4)), tile by tile.

    ``out``: float32 (0..1), or uint8 (0..255, rounded on the device, so only a quarter comes back).

    ``ab``: (B, 2, h, w) float32 on the source's device.
    """
    b, height, width, channels = source.shape
    dev = source.device
    ab = ab.to(dev, torch.float32)
    coeffs = _guided_coefficients(source, ab) if upsample == "guided" else None
    if upsample == "nearest":
        rows_idx = torch.as_tensor(nearest_index(ab.shape[2], height), device=dev)
        cols_idx = torch.as_tensor(nearest_index(ab.shape[3], width), device=dev)
    else:
        x0, x1, wx = linear_taps(ab.shape[3], width)
        cols = (torch.as_tensor(x0, device=dev), torch.as_tensor(x1, device=dev), torch.as_tensor(wx, device=dev))
    pending: list[tuple] = []  # device -> pinned copies in flight: (event, staged, target)
    for r0 in range(0, height, source.tile_rows):
        r1 = min(height, r0 + source.tile_rows)
        lightness = rgb_to_l(source.rows(r0, r1))  # (B, r, W)
        if upsample == "nearest":
            ab_t = ab.index_select(2, rows_idx[r0:r1]).index_select(3, cols_idx)
        elif upsample == "bilinear":
            ab_t = _bilinear_rows(ab, height, width, r0, r1, cols)
        else:
            c = _bilinear_rows(coeffs, height, width, r0, r1, cols)
            ab_t = c[:, :2] * (lightness[:, None] / 100.0) + c[:, 2:]
        a_t, b_t = ab_t[:, 0], ab_t[:, 1]
        if chroma > 1.0:
            factor = gamut_bounded_scale(lightness, a_t, b_t, chroma)
            a_t, b_t = a_t * factor, b_t * factor
        elif chroma != 1.0:
            a_t, b_t = a_t * chroma, b_t * chroma
        rgb = lab_to_rgb(lightness, a_t, b_t)  # (B, r, W, 3)
        if channels == 4:
            rgb = torch.cat([rgb, source.alpha(r0, r1)[..., None]], dim=-1)
        if out.dtype == torch.uint8:
            rgb = rgb.mul(255.0).round_().to(torch.uint8)
        target = out[:, r0:r1]
        if dev.type != "cuda" or not PINNED_TRANSFERS:
            target.copy_(rgb)
            continue
        # non-blocking copy into pinned memory; the next tile computes meanwhile. At most two tiles in flight,
        # so host staging memory stays bounded too.
        staged = torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=True)
        staged.copy_(rgb, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(dev))
        pending.append((event, staged, target))
        if len(pending) > 2:
            _finish(pending.pop(0))
    for item in pending:
        _finish(item)
    return out


def _finish(item: tuple) -> None:
    event, staged, target = item
    event.synchronize()
    target.copy_(staged)


def check_ab(ab: Tensor, batch: int) -> None:
    if ab.ndim != 4 or ab.shape[1] != 2 or ab.shape[0] != batch:
        raise InputImageError(f"ab: shape {tuple(ab.shape)} does not match {batch} image(s); expected "
                              f"({batch}, 2, h, w). Connect the ab output of the same Colorize run.")
