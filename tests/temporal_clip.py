"""A synthetic film clip with known motion and known colour, for the temporal-smoothing tests and benchmark.

Two shots made from public-domain pictures, with a hard cut between them:

* shot 1: ``assets/astronaut_bw.jpg`` (NASA, public domain; see assets/README.md), a slow pan and zoom-in;
* shot 2: ``tests/data/fixture_input.png`` (a picture drawn by a formula, /work/shared/reference/make_fixture_input.py:
  sine pattern, gradients, a disc and rectangles, fixed noise), a pan the other way.

Each frame is an affine view of its shot's picture, plus fresh sensor noise. The *true* colour (ab) is a map
attached to the picture (it moves with the content); the *per-frame prediction* is that colour, seen through the
same view, plus a known low-frequency jitter that changes from frame to frame (what makes colorized film
flicker). Because every view is a known affine map, the motion between two frames is known exactly: the flicker
after motion compensation can be measured without estimating any motion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
PHOTOS = (REPO / "assets" / "astronaut_bw.jpg", REPO / "tests" / "data" / "fixture_input.png")


@dataclass
class Clip:
    frames: torch.Tensor  # (B, H, W, 3) float32 0..1, with noise
    ab_true: torch.Tensor  # (B, 2, h, w) the colour attached to the content
    ab_pred: torch.Tensor  # (B, 2, h, w) ab_true + jitter (what per-frame colorization gives)
    views: list[np.ndarray]  # per frame: 2x3 affine map picture -> ab-resolution frame coordinates
    cut: int  # first frame of shot 2


def _grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(path)
    return image.astype(np.float32) / 255.0


def _true_colour(grey: np.ndarray, seed: int) -> np.ndarray:
    """(2, H, W) ab attached to the picture: smooth colour regions plus colour that follows the picture's edges."""
    rng = np.random.default_rng(seed)
    h, w = grey.shape
    coarse = rng.uniform(-35.0, 35.0, size=(2, 6, 6)).astype(np.float32)
    regions = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC) for c in coarse])
    blurred = cv2.GaussianBlur(grey, (0, 0), 3.0)
    edges = 25.0 * np.tanh((blurred - 0.5) * 6.0)
    return np.stack([regions[0] + edges, regions[1] - 0.6 * edges]).astype(np.float32)


def _view(t: float, picture_hw: tuple[int, int], out_wh: tuple[int, int], shot: int) -> np.ndarray:
    """2x3 affine map from picture pixels to output pixels at time t in 0..1 (a pan plus a slow zoom)."""
    ph, pw = picture_hw
    ow, oh = out_wh
    zoom = 1.0 + 0.25 * t if shot == 0 else 1.15 - 0.1 * t
    crop_w = pw * 0.7 / zoom
    cx = pw * (0.35 + 0.3 * t if shot == 0 else 0.65 - 0.3 * t)
    cy = ph * (0.5 + 0.05 * np.sin(np.pi * t))
    s = ow / crop_w
    return np.array([[s, 0.0, ow / 2 - s * cx], [0.0, s, oh / 2 - s * cy]], dtype=np.float64)


def _scaled(view: np.ndarray, factor: float) -> np.ndarray:
    return view * factor


def make_clip(frames: int = 48, cut: int = 24, size_wh: tuple[int, int] = (192, 144), ab_scale: float = 2 / 3,
              noise: float = 0.03, jitter: float = 4.0, seed: int = 0) -> Clip:
    """``frames`` frames of ``size_wh``; ab at ``ab_scale`` of it. ``jitter``: std (ab levels) of each
    frame's low-frequency colour error; ``noise``: std of the sensor noise in 0..1 units."""
    rng = np.random.default_rng(seed)
    pictures = [_grey(p) for p in PHOTOS]
    colours = [_true_colour(g, 10 + i) for i, g in enumerate(pictures)]
    w, h = size_wh
    aw, ah = round(w * ab_scale), round(h * ab_scale)
    yy, xx = np.mgrid[0:ah, 0:aw].astype(np.float32)
    out_frames, trues, preds, views = [], [], [], []
    for i in range(frames):
        shot = 0 if i < cut else 1
        length = cut if shot == 0 else frames - cut
        t = (i if shot == 0 else i - cut) / max(length - 1, 1)
        picture, colour = pictures[shot], colours[shot]
        view = _view(t, picture.shape, (w, h), shot)
        frame = cv2.warpAffine(picture, view, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frame = np.clip(frame + rng.normal(0.0, noise, size=frame.shape).astype(np.float32), 0.0, 1.0)
        # ab-resolution view: the same map scaled (pixel centres: x_ab = (x + 0.5) * k - 0.5)
        k = aw / w
        view_ab = _scaled(view, k)
        view_ab[:, 2] += 0.5 * k - 0.5
        true = np.stack([cv2.warpAffine(c, view_ab, (aw, ah), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REFLECT) for c in colour])
        # known low-frequency jitter: a per-frame offset plus a slow horizontal and vertical ramp, per channel
        coeff = rng.normal(0.0, jitter, size=(2, 3)).astype(np.float32)
        ramp = (coeff[:, 0, None, None] + coeff[:, 1, None, None] * (xx / aw - 0.5)
                + coeff[:, 2, None, None] * (yy / ah - 0.5))
        out_frames.append(np.repeat(frame[..., None], 3, axis=-1))
        trues.append(true)
        preds.append(true + ramp)
        views.append(view_ab)
    return Clip(torch.from_numpy(np.stack(out_frames)), torch.from_numpy(np.stack(trues)),
                torch.from_numpy(np.stack(preds).astype(np.float32)), views, cut)


def compensated_flicker(ab: torch.Tensor, clip: Clip, margin: int = 4) -> float:
    """Mean |ab_t - ab_{t-1} moved along the true motion| over consecutive frames of the same shot (ab levels).

    Only pixels whose motion comes from inside the previous frame (and ``margin`` pixels from its edge) count.
    """
    arr = ab.numpy()
    _, _, ah, aw = arr.shape
    total, count = 0.0, 0
    for t in range(1, arr.shape[0]):
        if t == clip.cut:
            continue
        prev_to_cur = _compose(clip.views[t], np.linalg.inv(_full(clip.views[t - 1])))
        moved = np.stack([cv2.warpAffine(c, prev_to_cur, (aw, ah), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan) for c in arr[t - 1]])
        valid = np.isfinite(moved).all(axis=0)
        valid[:margin] = valid[-margin:] = False
        valid[:, :margin] = valid[:, -margin:] = False
        total += float(np.abs(arr[t] - moved)[:, valid].sum())
        count += 2 * int(valid.sum())
    return total / count


def true_flow(clip: Clip, t: int) -> np.ndarray:
    """(h, w, 2) the exact motion from frame ``t`` back to frame ``t - 1`` at the ab resolution, in the optical
    flow's convention: ``frame_t(x, y) ~ frame_{t-1}(x + dx, y + dy)`` (within a shot)."""
    _, _, ah, aw = clip.ab_pred.shape
    cur_to_prev = _full(clip.views[t - 1]) @ np.linalg.inv(_full(clip.views[t]))
    yy, xx = np.mgrid[0:ah, 0:aw].astype(np.float64)
    px = cur_to_prev[0, 0] * xx + cur_to_prev[0, 1] * yy + cur_to_prev[0, 2]
    py = cur_to_prev[1, 0] * xx + cur_to_prev[1, 1] * yy + cur_to_prev[1, 2]
    return np.stack([px - xx, py - yy], axis=-1).astype(np.float32)


def _full(view: np.ndarray) -> np.ndarray:
    return np.vstack([view, [0.0, 0.0, 1.0]])


def _compose(a: np.ndarray, b_inv: np.ndarray) -> np.ndarray:
    return (_full(a) @ b_inv)[:2]
