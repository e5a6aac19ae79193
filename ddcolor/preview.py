"""Small pictures for the graph editor: the live preview while colorizing, the comparer's before/after copies.

Pure torch (no ComfyUI, no PIL). Images use ComfyUI's IMAGE layout: float ``(B, H, W, C)`` in 0..1.
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional

from .compare import match_pair
from .pipeline import merge_lab

LIVE_PREVIEW_SIDE = 256
"""Long side of the live preview in pixels (ComfyUI's own sampler previews are about this size)."""
LIVE_PREVIEW_INTERVAL = 0.5
"""At most one live preview every this many seconds (the last photo of a run is always shown)."""
COMPARER_MAX_SIDE = 2048
"""Long side of the comparer's before/after copies; larger photos are scaled down for the screen only."""


def fit_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) scaled to fit inside ``max_side`` x ``max_side``, never enlarged, each at least 1 pixel."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[1:3]) == size:
        return images
    nchw = images.permute(0, 3, 1, 2).float()
    nchw = functional.interpolate(nchw, size=size, mode="bilinear", align_corners=False, antialias=True)
    return nchw.permute(0, 2, 3, 1).clamp(0.0, 1.0)


def live_preview(image: torch.Tensor, ab: torch.Tensor, max_side: int = LIVE_PREVIEW_SIDE) -> torch.Tensor:
    """The colorized photo, small: ``image`` (H, W, C) with its predicted ``ab`` (2, h, w) put on it in Lab.

    The photo is scaled down first (long side ``max_side``), so the colour conversion works on a small picture
    whatever the scan's size. Returns uint8 (h', w', 3) on the CPU.
    """
    # every step-th pixel first (a free view) down to about twice the preview size, then an antialiased resize
    step = max(1, max(image.shape[0], image.shape[1]) // (2 * max_side))
    coarse = image[::step, ::step, :3].detach().to("cpu", torch.float32)
    small = _resize(coarse[None], fit_size(*image.shape[:2], max_side))
    rgb = merge_lab(small, ab[None].detach().to("cpu", torch.float32), upsample="bilinear")[0, ..., :3]
    return (rgb * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


class Throttle:
    """``ready()`` is True at most once per ``interval`` seconds (and always when ``last`` is True)."""

    def __init__(self, interval: float = LIVE_PREVIEW_INTERVAL, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self._last: float | None = None

    def ready(self, last: bool = False) -> bool:
        now = self.clock()
        if last or self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False


def comparer_pair(before: torch.Tensor, after: torch.Tensor,
                  max_side: int = COMPARER_MAX_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """The two pictures the graph editor's comparer shows: the same batch length and the same size.

    As in DDColor Compare's IMAGE output, ``before`` is resized to ``after``'s size (and a single ``before`` is
    repeated for a batch); both are then scaled down together if the long side is over ``max_side``.
    Returns float32 RGB ``(B, H, W, 3)`` on the CPU.
    """
    before, after = match_pair(before, after)
    size = fit_size(after.shape[1], after.shape[2], max_side)
    return _resize(before, size), _resize(after, size)
