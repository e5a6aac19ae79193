"""Before/after pictures for judging a colorization (the "DDColor Compare" node). Pure torch, no ComfyUI.

Images use ComfyUI's IMAGE layout: float ``(B, H, W, C)`` in 0..1.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from .errors import InputImageError

MODES: tuple[str, ...] = ("side_by_side", "split")
DIVIDER_RGB = (1.0, 1.0, 1.0)
"""Colour of the vertical line drawn at the split."""


def _as_rgb(image: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputImageError(f"{name}: expected an IMAGE batch (B, H, W, C), got {shape}.")
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise InputImageError(f"{name}: the image is empty ({tuple(image.shape)}).")
    channels = image.shape[-1]
    image = image.float()
    if channels == 1:
        return image.expand(-1, -1, -1, 3)
    if channels in (3, 4):
        return image[..., :3]
    raise InputImageError(f"{name}: expected 1, 3 or 4 colour channels, got {channels}.")


def _match(before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same batch (a single ``before`` is repeated) and ``before`` resized to ``after``'s height and width."""
    nb, na = before.shape[0], after.shape[0]
    if nb != na:
        if nb == 1:
            before = before.expand(na, -1, -1, -1)
        elif na == 1:
            after = after.expand(nb, -1, -1, -1)
        else:
            raise InputImageError(
                f"before has {nb} images but after has {na}; connect batches of the same length "
                "(or a single image on one side)."
            )
    height, width = after.shape[1], after.shape[2]
    if before.shape[1:3] != after.shape[1:3]:
        nchw = before.permute(0, 3, 1, 2)
        antialias = nchw.shape[2] > height or nchw.shape[3] > width
        nchw = functional.interpolate(
            nchw, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias
        )
        before = nchw.permute(0, 2, 3, 1).clamp(0.0, 1.0)
    return before, after


def match_pair(before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``before`` and ``after`` as float32 RGB on the CPU, same batch length, ``before`` at ``after``'s size."""
    return _match(_as_rgb(before, "before").cpu(), _as_rgb(after, "after").cpu())


def compare_images(
    before: torch.Tensor, after: torch.Tensor, mode: str = "side_by_side", split_position: float = 0.5
) -> torch.Tensor:
    """Compose ``before`` and ``after`` into one picture per batch item.

    * ``side_by_side``: ``before | after``, width doubled.
    * ``split``: one picture of ``after``'s size, ``before`` left of ``split_position`` (0 = left edge,
      1 = right edge) and ``after`` right of it, with a thin white line at the split.

    ``before`` is resized (bilinear) to ``after``'s size when they differ, so the grey original and the
    colorized result line up. Returns float32 RGB ``(B, H, W', 3)`` on the CPU.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown; choose one of {', '.join(MODES)}.")
    if not 0.0 <= float(split_position) <= 1.0:
        raise ValueError(f"split_position = {split_position} must be between 0 (left edge) and 1 (right edge).")
    before, after = match_pair(before, after)
    if mode == "side_by_side":
        return torch.cat([before, after], dim=2).contiguous()
    width = after.shape[2]
    cut = int(round(float(split_position) * width))
    out = torch.cat([before[:, :, :cut], after[:, :, cut:]], dim=2).clone()
    line = max(1, width // 400)
    if 0 < cut < width:
        start = max(0, min(cut - (line + 1) // 2, width - line))
        out[:, :, start : start + line] = torch.tensor(DIVIDER_RGB, dtype=out.dtype)
    return out
