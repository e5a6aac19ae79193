"""Dense optical flow in torch: batched, on any device, no weights (for :mod:`ddcolor.temporal` on a GPU).

:func:`dense_flow` estimates, for a batch of frame pairs at once, where every pixel of the current frame came from
in the previous one. Method: coarse-to-fine pyramidal Lucas–Kanade with warping. On every pyramid level (coarse to
fine, halving down to ~8 pixels) it warps the previous frame along the current estimate and solves, per pixel, the
2x2 least-squares system of the brightness-constancy equations over a small window (damped, so flat, textureless
areas keep the motion from the coarser level instead of dividing by zero), then averages the flow over a small
box weighted by texture, so well-textured pixels lend their motion to flat ones. Every step is a whole-batch
tensor operation (pooling, shifts, ``grid_sample``): no per-pixel or per-frame Python loop, no host
synchronisation, deterministic. Why this method: it is a handful of cheap, fully parallel tensor operations per
level that map directly onto a GPU, and on the synthetic clip of the tests it smooths as well as OpenCV's DIS
(``benchmarks/bench_temporal.py``).

Convention (the same as OpenCV's DIS as :mod:`ddcolor.temporal` uses it): ``flow[n, y, x] = (dx, dy)`` in pixels,
such that ``cur[n](x, y) ~ prev[n](x + dx, y + dy)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_MIN_SIDE = 8  # the coarsest pyramid level is the last whose shorter side is still at least this
_ITERATIONS = 2  # warp + solve per pyramid level
_WINDOW = 5  # the Lucas–Kanade window is this box applied twice (a 9x9 tent)
_PRESMOOTH = 3  # box applied twice to each level's images: the linearisation needs them smooth at the pixel scale
_SPREAD = 7  # box over which the flow is averaged after each step, weighted by texture (see _refine)
_SPREAD_FLOOR = 0.1  # weight of a textureless pixel ((L*/pixel)^2): it still keeps a little of its own motion
_DAMPING = 1.0  # (L*/pixel)^2 added to the structure tensor's diagonal: flat areas keep the coarser motion
_RELATIVE = 0.1  # ... plus this share of its trace: along an edge (aperture problem) the step stays small
_MAX_STEP = 1.0  # pixels per step and level: no runaway where the equations say little


def _box(x: Tensor, size: int) -> Tensor:
    return F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)


def _window(x: Tensor) -> Tensor:
    """The Lucas–Kanade window: a box applied twice (a tent; its frequency response is never negative, so the
    per-pixel iteration cannot amplify a checkerboard in the flow as a single box would)."""
    return _box(_box(x, _WINDOW), _WINDOW)


def _gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences (one-sided at the borders) of (N, 1, h, w)."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) * 0.5
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) * 0.5
    return gx, gy


def _base_grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :]
    return xs, ys


def sampling_grid(flow: Tensor) -> Tensor:
    """(N, h, w, 2) pixel offsets ``(dx, dy)`` -> (N, h, w, 2) grid for ``grid_sample`` (align_corners=True)."""
    _, h, w, _ = flow.shape
    xs, ys = _base_grid(h, w, flow.device)
    gx = (xs + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    return torch.stack([gx, gy], dim=-1)


def warp(image: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """(N, C, h, w) sampled at ``(x, y) + flow`` (flow (N, 2, h, w), pixels), bilinear, borders repeated; and
    (N, 1, h, w) 1.0 where the sample lies inside the image, else 0.0."""
    grid = sampling_grid(flow.permute(0, 2, 3, 1))
    inside = (grid.abs() <= 1.0).all(dim=-1)[:, None].to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True), inside


def _pyramid_sizes(h: int, w: int) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    while min(sizes[-1]) // 2 >= _MIN_SIDE:
        sh, sw = sizes[-1]
        sizes.append((math.ceil(sh / 2), math.ceil(sw / 2)))
    return sizes[::-1]  # coarse to fine


def _refine(cur: Tensor, prev: Tensor, flow: Tensor, iterations: int) -> Tensor:
    """``iterations`` Lucas–Kanade steps on one level: (N, 1, h, w) images, (N, 2, h, w) flow."""
    cgx, cgy = _gradients(cur)
    for _ in range(iterations):
        warped, inside = warp(prev, flow)
        wgx, wgy = _gradients(warped)
        # the mean of both frames' gradients (a better linearisation than either alone); pixels whose sample left
        # the frame say nothing and are out of the least squares
        gx = (cgx + wgx) * (0.5 * inside)
        gy = (cgy + wgy) * (0.5 * inside)
        error = warped - cur  # wanted: prev(x + flow + step) = cur(x), i.e. grad . step = -error
        sums = _window(torch.cat([gx * gx, gx * gy, gy * gy, gx * error, gy * error], dim=1))
        jxx, jxy, jyy, bx, by = sums.unbind(1)
        damping = (jxx + jyy) * _RELATIVE + _DAMPING
        jxx, jyy = jxx + damping, jyy + damping
        inv_det = 1.0 / (jxx * jyy - jxy * jxy)  # > 0: the damped tensor is positive definite
        step = torch.stack([(jxy * by - jyy * bx) * inv_det, (jxy * bx - jxx * by) * inv_det], dim=1)
        flow = flow + step.clamp(-_MAX_STEP, _MAX_STEP) * inside
        # Spread the motion: a weighted average over a _SPREAD box, weighted by how well each pixel pins its motion
        # down (the structure tensor's smaller eigenvalue), so textured pixels lend their motion to flat ones and
        # to edges (aperture problem) instead of the noise there setting it.
        trace = jxx + jyy - 2.0 * damping
        root = ((jxx - jyy) ** 2 + 4.0 * jxy * jxy).sqrt()
        weight = (((trace - root) * 0.5).clamp_min(0.0) + _SPREAD_FLOOR)[:, None]
        sums = _box(torch.cat([flow * weight, weight], dim=1), _SPREAD)
        flow = sums[:, :2] / sums[:, 2:]
    return flow


def dense_flow(cur: Tensor, prev: Tensor, *, iterations: int | None = None) -> Tensor:
    """Optical flow from each ``cur[n]`` back to ``prev[n]``.

    Args:
        cur, prev: (N, h, w) float brightness (any scale; :mod:`ddcolor.temporal` passes L* 0..100), same device.
            Any h, w >= 1.

    Returns:
        (N, h, w, 2) float32 on the inputs' device: ``(dx, dy)`` in pixels with ``cur(x, y) ~ prev(x+dx, y+dy)``.
    """
    if cur.shape != prev.shape or cur.ndim != 3:
        raise ValueError(f"dense_flow: cur and prev must both be (N, h, w); got {tuple(cur.shape)} and "
                         f"{tuple(prev.shape)}")
    n, h, w = cur.shape
    both = torch.cat([cur, prev]).to(torch.float32)[:, None]  # (2N, 1, h, w): one operation for both
    sizes = _pyramid_sizes(h, w)
    flow = torch.zeros(n, 2, *sizes[0], device=cur.device, dtype=torch.float32)
    for level, (lh, lw) in enumerate(sizes):
        if level > 0:
            ph, pw = sizes[level - 1]
            flow = F.interpolate(flow, size=(lh, lw), mode="bilinear", align_corners=False)
            flow = torch.cat([flow[:, :1] * (lw / pw), flow[:, 1:] * (lh / ph)], dim=1)  # pixels of this level
        level_pair = both if (lh, lw) == (h, w) else F.interpolate(both, size=(lh, lw), mode="area")
        level_pair = _box(_box(level_pair, _PRESMOOTH), _PRESMOOTH)
        c, p = level_pair[:n], level_pair[n:]
        flow = _refine(c, p, flow, _ITERATIONS if iterations is None else iterations)
    return flow.permute(0, 2, 3, 1).contiguous()
