"""The torch optical flow (ddcolor.flow) against motion known exactly: a procedural texture (a sum of sinusoids)
evaluated at shifted or zoomed coordinates, so the true flow has no interpolation error in it.

The same torch code runs on a GPU (ddcolor.temporal uses it there); here it runs on the CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ddcolor.flow import dense_flow, sampling_grid
from ddcolor.temporal import _flow as dis_flow

DEVICE = torch.device(os.environ.get("DDCOLOR_TEST_DEVICE", "cpu"))


def texture(h: int, w: int, dx: float = 0.0, dy: float = 0.0, zoom: float = 1.0, seed: int = 0) -> torch.Tensor:
    """(h, w) L*-like picture (about 10..90) whose content at pixel (x, y) is the pattern at
    ``centre + (x - centre) * zoom + (dx, dy)``: a frame ``cur`` made with these is ``prev(x + flow)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    x, y = cx + (xx - cx) * zoom + dx, cy + (yy - cy) * zoom + dy
    pattern = np.zeros((h, w))
    for _ in range(12):
        period, angle, phase = rng.uniform(6, 30), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        pattern += np.sin(2 * np.pi / period * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    return torch.from_numpy((50 + 12 * pattern).astype(np.float32))


def true_flow(h: int, w: int, dx: float, dy: float, zoom: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([(xx - (w - 1) / 2) * (zoom - 1) + dx, (yy - (h - 1) / 2) * (zoom - 1) + dy], axis=-1)


def endpoint_error(flow: np.ndarray, truth: np.ndarray, margin: int) -> np.ndarray:
    error = np.sqrt(((flow - truth) ** 2).sum(-1))
    return error[margin:-margin, margin:-margin]


@pytest.mark.parametrize(("h", "w", "dx", "dy", "zoom", "limit"), [
    (96, 128, 1.6, -0.7, 1.0, 0.08),  # a shift of a pixel and a bit (measured: 0.03 px off)
    (96, 128, 6.3, 2.2, 1.0, 0.08),  # several pixels: found through the pyramid (0.03)
    (96, 128, -11.5, 3.0, 1.0, 0.1),  # a fast pan, 9 % of the width per frame (0.03)
    (96, 128, 0.0, 0.0, 1.03, 0.08),  # a zoom: flow 0 in the centre, 1.9 px at the sides (0.03)
    (37, 53, 1.3, 0.4, 1.0, 0.1),  # odd, non-square (0.04)
])
def test_known_motion_is_recovered_in_the_interior(h, w, dx, dy, zoom, limit):
    prev, cur = texture(h, w), texture(h, w, dx, dy, zoom)
    flow = dense_flow(cur[None], prev[None])
    assert flow.shape == (1, h, w, 2) and flow.dtype == torch.float32
    error = endpoint_error(flow[0].numpy(), true_flow(h, w, dx, dy, zoom), margin=8 if h > 40 else 5)
    assert error.mean() <= limit, (error.mean(), error.max())
    assert np.percentile(error, 95) <= 4 * limit + 0.2, np.percentile(error, 95)


def test_an_object_moving_over_another_motion_keeps_its_own_motion():
    """A textured square (a person) moves one way, the background the other: away from the square's edges (and
    from what it uncovers) each keeps its own motion, not a blend of both."""
    h, w, (bx, by), (fx, fy) = 96, 128, (2.0, 0.0), (-3.0, 2.0)
    y0, y1, x0, x1 = 28, 68, 44, 84  # the square in the current frame
    yy, xx = np.mgrid[0:h, 0:w]

    def square(dx: float, dy: float, grow: int) -> np.ndarray:
        return (yy >= y0 + dy - grow) & (yy < y1 + dy + grow) & (xx >= x0 + dx - grow) & (xx < x1 + dx + grow)

    prev = torch.where(torch.from_numpy(square(fx, fy, 0)), texture(h, w, seed=5), texture(h, w, seed=0))
    cur = torch.where(torch.from_numpy(square(0, 0, 0)), texture(h, w, fx, fy, seed=5), texture(h, w, bx, by, seed=0))
    flow = dense_flow(cur[None], prev[None])[0].numpy()
    inner = square(0, 0, -6)
    frame = (yy >= 6) & (yy < h - 6) & (xx >= 6) & (xx < w - 6)
    # background: away from the square, and not where the square was (uncovered there: no true match)
    outer = frame & ~square(0, 0, 6) & ~square(fx - bx, fy - by, 6)
    inner_error = np.sqrt(((flow[inner] - [fx, fy]) ** 2).sum(-1))
    outer_error = np.sqrt(((flow[outer] - [bx, by]) ** 2).sum(-1))
    assert inner_error.mean() <= 0.3 and outer_error.mean() <= 0.3, (inner_error.mean(), outer_error.mean())


def test_same_convention_as_dis_and_the_smoother_s_warp():
    """(dx, dy) order, pixel units and direction as OpenCV DIS gives them to ddcolor.temporal: warping the previous
    frame along the flow, the way the smoother does, gives the current frame."""
    prev, cur = texture(72, 96), texture(72, 96, 2.4, -1.3)
    flow = dense_flow(cur[None], prev[None])[0]
    dis = torch.from_numpy(dis_flow(cur.numpy(), prev.numpy()))
    inner = (slice(8, -8), slice(8, -8))
    assert (flow[inner] - dis[inner]).abs().mean() <= 0.2
    assert flow[inner][..., 0].mean() == pytest.approx(2.4, abs=0.05)
    assert flow[inner][..., 1].mean() == pytest.approx(-1.3, abs=0.05)
    warped = torch.nn.functional.grid_sample(prev[None, None], sampling_grid(flow[None]), mode="bilinear",
                                             padding_mode="border", align_corners=True)[0, 0]
    still = (prev - cur)[inner].abs().mean()
    assert (warped - cur)[inner].abs().mean() <= 0.05 * still


def test_a_batch_is_the_same_as_each_pair_alone_and_runs_are_deterministic():
    prevs = torch.stack([texture(40, 56, seed=s) for s in range(3)])
    curs = torch.stack([texture(40, 56, 1.0 + s, -0.5 * s, seed=s) for s in range(3)])
    batch = dense_flow(curs, prevs)
    for i in range(3):
        assert torch.equal(batch[i], dense_flow(curs[i:i + 1], prevs[i:i + 1])[0])
    assert torch.equal(batch, dense_flow(curs, prevs))


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 1), (2, 2), (1, 9), (9, 1), (2, 7), (3, 5), (8, 8), (17, 9)])
def test_tiny_and_thin_frames_do_not_crash(hw):
    h, w = hw
    prev, cur = torch.rand(2, h, w, generator=torch.Generator().manual_seed(0)) * 100
    flow = dense_flow(cur[None], prev[None])
    assert flow.shape == (1, h, w, 2)
    assert torch.isfinite(flow).all()


def test_flat_frames_give_no_motion_and_no_nan():
    flat = torch.full((2, 24, 32), 37.5)
    black = torch.zeros(2, 24, 32)
    assert dense_flow(flat, flat).abs().max() <= 1e-6  # (rounding of the box averages)
    assert torch.isfinite(dense_flow(flat, black)).all()  # a fade to black: no texture, no NaN
    textured = texture(24, 32)[None].expand(2, -1, -1)
    assert torch.isfinite(dense_flow(flat, textured)).all() and torch.isfinite(dense_flow(textured, flat)).all()


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs DDCOLOR_TEST_DEVICE=cuda (scripts/gpu_run.sh)")
def test_the_same_flow_on_the_test_device():
    """The GPU runs the same maths: batched, deterministic, and equal to the CPU result up to float rounding."""
    prevs = torch.stack([texture(72, 96, seed=s) for s in range(4)])
    curs = torch.stack([texture(72, 96, 2.0 * s - 3.0, 1.5 - s, zoom=1.0 + 0.01 * s, seed=s) for s in range(4)])
    on_device = dense_flow(curs.to(DEVICE), prevs.to(DEVICE))
    assert on_device.device.type == DEVICE.type
    assert torch.equal(on_device, dense_flow(curs.to(DEVICE), prevs.to(DEVICE)))
    difference = (on_device.cpu() - dense_flow(curs, prevs)).abs()
    assert difference.mean().item() <= 0.01 and difference.max().item() <= 0.25, difference.max().item()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="cur and prev"):
        dense_flow(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))
