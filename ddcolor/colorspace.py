"""Colour maths of the DDColor pipeline, on float32 numpy arrays (H, W, C), RGB in 0..1.

The official pipeline uses OpenCV's float conversions, and OpenCV's float RGB->Lab is a 33^3 lookup table
with trilinear interpolation, not the CIE formula (L differs by up to 0.22; SPEC §6.1). These functions call
``cv2.cvtColor`` itself, so L and the final colours match the official code exactly; ``lab_to_linear_rgb``
(the analytic formula) is used only to test whether a colour is inside the sRGB gamut.
"""

from __future__ import annotations

import cv2
import numpy as np

# CIE XYZ (D65) -> linear sRGB, the matrix OpenCV uses.
_XYZ_TO_RGB = np.array(
    [[3.240479, -1.53715, -0.498535], [-0.969256, 1.875991, 0.041556], [0.055648, -0.204043, 1.057311]],
    dtype=np.float32,
)
_WHITE = np.array([0.950456, 1.0, 1.088754], dtype=np.float32)


def rgb_to_l(rgb: np.ndarray) -> np.ndarray:
    """L* (0..100) of an (H, W, 3) float32 RGB image in 0..1, exactly as OpenCV computes it."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)[..., 0]


def lab_to_rgb(lightness: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0..1 from L* (0..100) and a*, b*; out-of-gamut colours are clipped (OpenCV)."""
    lab = np.stack([lightness, a, b], axis=-1).astype(np.float32, copy=False)
    return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)


def grey_from_l(lightness: np.ndarray) -> np.ndarray:
    """The neutral grey RGB image (R = G = B, sRGB-encoded) with lightness ``L``: the network's input."""
    zeros = np.zeros_like(lightness)
    return lab_to_rgb(lightness, zeros, zeros)


def lab_to_linear_rgb(lightness: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Analytic CIE Lab -> linear sRGB (..., 3), not clipped: values outside 0..1 are out of gamut."""
    fy = (lightness + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    delta = 6.0 / 29.0

    def finv(t: np.ndarray) -> np.ndarray:
        return np.where(t > delta, t * t * t, 3.0 * delta * delta * (t - 4.0 / 29.0))

    y = np.where(lightness > 8.0, fy * fy * fy, lightness / 903.3)
    xyz = np.stack([finv(fx) * _WHITE[0], y, finv(fz) * _WHITE[2]], axis=-1)
    return xyz @ _XYZ_TO_RGB.T


def gamut_bounded_scale(lightness: np.ndarray, a: np.ndarray, b: np.ndarray, strength: float,
                        steps: int = 12, tol: float = 1e-4) -> np.ndarray:
    """Per-pixel factor in [1, strength] for boosting (a, b): ``strength`` where that stays inside the sRGB
    gamut, else the largest factor that does (found by bisection); 1 where the colour is already outside.
    """
    def inside(t: np.ndarray) -> np.ndarray:
        rgb = lab_to_linear_rgb(lightness, a * t, b * t)
        return np.all((rgb >= -tol) & (rgb <= 1.0 + tol), axis=-1)

    lo = np.ones_like(lightness)
    hi = np.full_like(lightness, strength)
    ok_hi = inside(hi)
    if ok_hi.all():
        return hi
    ok_lo = inside(lo)
    todo = ~ok_hi & ok_lo
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ok = inside(mid)
        lo = np.where(todo & ok, mid, lo)
        hi = np.where(todo & ~ok, mid, hi)
    return np.where(ok_hi, strength, lo).astype(np.float32)
