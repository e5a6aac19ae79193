"""How large the network input should be for a photo, by subject (the "DDColor Resize by Preset" node).

DDColor colorizes a resized copy of the photo (the *model input*, ``input_size`` px) and only its colour
(Lab a/b) is carried back to the full-resolution original, so ``input_size`` trades semantic context against
fine detail:

* ``portrait`` (faces, people): 480-672 px. Faces get the most natural skin and lip colours when the network
  sees the picture close to its training scale; larger inputs make faces patchy.
* ``building`` (architecture, streets, landscapes): 960-1280 px. Large scenes have many small objects
  (windows, signs, foliage) that need more pixels to be recognised and coloured separately.
* ``custom``: exactly ``custom_size`` (a multiple of 32 between 64 and 2048).

The rule for ``portrait`` and ``building`` (pure, documented, tested):

1. start from the photo's **short side**, rounded to the nearest multiple of 32;
2. keep it inside the preset's window (portrait 480-672, building 960-1280);
3. never go above the photo's **long side** rounded up to a multiple of 32 - upscaling a small photo past its
   own size adds no detail, only time and memory (so a 400x600 scan gets 608 with ``building``, not 960);
4. never below 64.

The result is always a multiple of 32 (the network downsamples by 32).
"""

from __future__ import annotations

import math

from .errors import InputImageError

PRESETS: tuple[str, ...] = ("portrait", "building", "custom")
"""Preset names, in the order the node shows them."""

PRESET_WINDOWS: dict[str, tuple[int, int]] = {
    "portrait": (480, 672),
    "building": (960, 1280),
}
"""Inclusive (min, max) model-input window of each automatic preset, multiples of 32."""

SIZE_MULTIPLE = 32
MIN_SIZE = 64
MAX_SIZE = 2048


def check_input_size(value: int, name: str = "input_size") -> str | None:
    """``None`` if ``value`` is a valid model-input size, else a message saying what is wrong and what to do."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be a whole number of pixels, got {value!r}."
    if value < MIN_SIZE or value > MAX_SIZE:
        return f"{name} = {value} is outside {MIN_SIZE}..{MAX_SIZE}; pick a size in that range (512 is the default)."
    if value % SIZE_MULTIPLE:
        lower = value - value % SIZE_MULTIPLE
        upper = lower + SIZE_MULTIPLE
        hint = f"{upper}" if lower < MIN_SIZE else f"{lower} or {upper}"
        return f"{name} = {value} is not a multiple of {SIZE_MULTIPLE} (the network downsamples by 32); use {hint}."
    return None


def choose_input_size(height: int, width: int, preset: str, custom_size: int = 512) -> int:
    """Model-input size (a multiple of 32) for a ``height`` x ``width`` photo and a subject ``preset``.

    See the module docstring for the rule. ``custom`` returns ``custom_size`` unchanged (it must already be a
    valid size: a multiple of 32 in 64..2048).

    Raises:
        InputImageError: ``height``/``width`` are not positive.
        ValueError: unknown ``preset`` or invalid ``custom_size`` (the message says which values are allowed).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}.")
    if preset == "custom":
        problem = check_input_size(custom_size, "custom_size")
        if problem:
            raise ValueError(problem)
        return int(custom_size)
    if height < 1 or width < 1:
        raise InputImageError(f"the image is {height}x{width} pixels; it needs at least 1x1 to pick a size.")
    low, high = PRESET_WINDOWS[preset]
    short_side, long_side = min(height, width), max(height, width)
    size = SIZE_MULTIPLE * max(1, math.floor(short_side / SIZE_MULTIPLE + 0.5))
    size = min(max(size, low), high)
    size = min(size, SIZE_MULTIPLE * math.ceil(long_side / SIZE_MULTIPLE))
    return max(size, MIN_SIZE)
