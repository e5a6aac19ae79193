"""Batch colorization: image -> grey model input -> ab -> full-resolution L + ab -> RGB.

With default options this is the official pipeline (SPEC §5; upstream ``ColorizationPipeline.process``):

1. ``L`` of the full-resolution photo (OpenCV Lab, exact);
2. the photo resized to S x S (bilinear, no antialiasing), its ``L`` made into a neutral grey RGB image;
3. the network predicts ``ab`` at S x S;
4. ``ab`` resized to the photo's size (legacy nearest, float32 index arithmetic);
5. ``Lab(L_full, ab) -> RGB`` (OpenCV, clipped to 0..1).

Images are ComfyUI's layout: float (B, H, W, C) RGB in 0..1. Full-resolution work (steps 1, 4, 5) runs in row
tiles of about a megapixel, so an 8000 x 6000 photo needs the output tensor plus a few MB, not several
full-size float copies.

On a GPU the same steps run in torch on the model's device (:mod:`ddcolor.devicepath`): :func:`colorize` does
that by itself when the model is on CUDA; ``device=`` on :func:`prepare_input` / :func:`merge_lab` and
``device_path=True`` on :func:`colorize` choose it explicitly (also on the CPU, for tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor

from . import accel, devicepath
from .colorspace import gamut_bounded_scale, grey_from_l, lab_to_rgb, rgb_to_l
from .errors import InputImageError

ResizeMode = Literal["square", "keep_aspect"]
UpsampleMode = Literal["nearest", "bilinear", "guided"]
RESIZE_MODES: tuple[str, ...] = ("square", "keep_aspect")
UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "bilinear", "guided")
ImagesLike = Tensor | np.ndarray

_TILE_PIXELS = 1 << 20
_GUIDED_RADIUS = 2  # box radius at the prediction's resolution
_GUIDED_EPS = 4e-4  # regularisation for L/100 in 0..1 (an edge of ~2 L* units counts)


@dataclass(frozen=True)
class ModelInput:
    """The network input for a batch of same-size photos."""

    x: Tensor
    """(B, 3, Sh, Sw) float32 grey image; Sh, Sw multiples of 32. On the CPU, or on the device given to
    :func:`prepare_input`."""
    content_hw: tuple[int, int]
    """(h, w): the top-left region of ``x`` that holds the photo (the rest is edge padding)."""


def _fail(name: str, problem: str, fix: str) -> InputImageError:
    return InputImageError(f"{name}: {problem}. {fix}")


def validate_images(images: ImagesLike, name: str = "images") -> Tensor:
    """Check a batch and return it as a float32 CPU tensor (B, H, W, C), C in {1, 3, 4}. Values are not clipped."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise _fail(name, f"expected an image tensor, got {type(images).__name__}", "Pass a float (B,H,W,C) tensor.")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise _fail(name, f"expected (B, H, W, C) or (H, W, C), got shape {tuple(images.shape)}",
                    "Pass images in ComfyUI's IMAGE layout.")
    if not images.is_floating_point():
        raise _fail(name, f"dtype {images.dtype} is not floating point",
                    "Convert to float in 0..1 first (e.g. uint8 / 255).")
    b, h, w, c = images.shape
    if b == 0 or h == 0 or w == 0:
        raise _fail(name, f"empty image batch of shape {tuple(images.shape)}", "Check the node that produced it.")
    if c not in (1, 3, 4):
        raise _fail(name, f"{c} channels", "Expected 1 (grey), 3 (RGB) or 4 (RGBA; alpha is kept unchanged).")
    images = images.detach().to("cpu", torch.float32)
    low, high = torch.aminmax(images)  # reductions propagate NaN/inf without a full-size temporary
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        bad = (~torch.isfinite(images.flatten(1)).all(dim=1)).nonzero().flatten().tolist()
        where = f"{name}[{bad[0]}]" if images.shape[0] > 1 else name
        raise _fail(where, "contains NaN or infinite values", "Fix the node that produced the image.")
    return images


def _rgb_numpy(image: Tensor) -> np.ndarray:
    """(H, W, C) tensor -> (H, W, 3) float32 RGB clipped to 0..1 (grey replicated, alpha dropped)."""
    arr = image.numpy()
    arr = np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3]
    return np.clip(arr, 0.0, 1.0, dtype=np.float32)


def _resized_rgb(image: Tensor, size_wh: tuple[int, int], interpolation: int) -> np.ndarray:
    """Clip an (H, W, C) image to 0..1 and resize it to (h, w, 3) RGB (no full-size copy when already in range)."""
    arr = image.numpy()
    if arr.min() < 0.0 or arr.max() > 1.0:
        arr = np.clip(arr, 0.0, 1.0)
    small = cv2.resize(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr), size_wh,
                       interpolation=interpolation)
    return _rgb_numpy(torch.from_numpy(small.reshape(size_wh[1], size_wh[0], -1)))


def check_input_size(input_size: int) -> int:
    if not isinstance(input_size, (int, np.integer)) or input_size < 32 or input_size % 32:
        lower = max(32, int(input_size) // 32 * 32) if isinstance(input_size, (int, float)) else 512
        raise InputImageError(
            f"input_size={input_size!r}: DDColor needs a multiple of 32 (its encoder halves the image five "
            f"times). Use {lower} or {lower + 32}.")
    return int(input_size)


def model_input_geometry(height: int, width: int, input_size: int,
                         resize_mode: ResizeMode = "square") -> tuple[tuple[int, int], tuple[int, int]]:
    """((Sh, Sw), (h, w)): the network input size and the photo's region in it.

    ``square`` (official): the photo is stretched to S x S. ``keep_aspect``: the long side becomes S, the short
    side keeps the aspect ratio and is padded up to a multiple of 32.
    """
    size = check_input_size(input_size)
    if resize_mode == "square":
        return (size, size), (size, size)
    if resize_mode != "keep_aspect":
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {resize_mode!r}")
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return (math.ceil(h / 32) * 32, math.ceil(w / 32) * 32), (h, w)


def prepare_input(images: ImagesLike, input_size: int = 512, *, resize_mode: ResizeMode = "square",
                  device: str | torch.device | None = None) -> ModelInput:
    """Build the network input (neutral grey from the photo's L) for a batch of same-size photos.

    ``device``: None = the official OpenCV steps on the CPU (exact); a device = the torch steps on that device
    (only the rows the resize needs are uploaded), with ``x`` left there.
    """
    batch = validate_images(images)
    _, height, width, _ = batch.shape
    (sh, sw), (h, w) = model_input_geometry(height, width, input_size, resize_mode)
    # Official: bilinear without antialiasing. keep_aspect shrinks with area averaging (no aliasing).
    shrink = resize_mode == "keep_aspect" and h * w < height * width
    if device is not None:
        source = devicepath.Source(batch, torch.device(device))
        with accel.exact_fp32(source.device, torch.float32):
            return ModelInput(devicepath.network_input(source, (h, w), (sh, sw), area=shrink), (h, w))
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    x = np.empty((batch.shape[0], sh, sw, 3), dtype=np.float32)
    for i, image in enumerate(batch):
        small = _resized_rgb(image, (w, h), interpolation)
        grey = grey_from_l(rgb_to_l(small))  # (h, w, 3)
        x[i] = np.pad(grey, ((0, sh - h), (0, sw - w), (0, 0)), mode="edge")
    return ModelInput(torch.from_numpy(x).permute(0, 3, 1, 2), (h, w))


def predict_ab(model: torch.nn.Module, model_input: ModelInput | Tensor) -> Tensor:
    """Run the network: (B, 2, h, w) float32 CPU ab, cropped to the photo's region of the input.

    On CUDA the forward runs through :func:`ddcolor.accel.forward` (fp32 without TF32, channels_last, CUDA-graph
    replay for repeated shapes); on the CPU it is plain ``model(x)``.
    """
    return _predict_ab_on_device(model, model_input).float().cpu().contiguous()


def _predict_ab_on_device(model: torch.nn.Module, model_input: ModelInput | Tensor) -> Tensor:
    """(B, 2, h, w) ab on the model's device, in the model's dtype."""
    if isinstance(model_input, Tensor):
        model_input = ModelInput(model_input, tuple(model_input.shape[-2:]))
    param = next(model.parameters())
    x = model_input.x
    if x.device != param.device and x.device.type == "cpu" and param.device.type == "cuda":
        x = x.pin_memory().to(param.device, non_blocking=True)
    ab = accel.forward(model, x.to(param.device, param.dtype))
    h, w = model_input.content_hw
    return ab[:, :, :h, :w]


# the index / tap tables are shared with the device path (one definition, so both paths sample alike)
_nearest_index = devicepath.nearest_index
_linear_weights = devicepath.linear_taps


def _bilinear_rows(maps: np.ndarray, height: int, width: int, r0: int, r1: int) -> np.ndarray:
    """Rows r0..r1 of ``maps`` (C, h, w) resized bilinearly to (C, height, width)."""
    y0, y1, wy = _linear_weights(maps.shape[1], height, r0, r1)
    x0, x1, wx = _linear_weights(maps.shape[2], width)
    rows = maps[:, y0] * (1 - wy)[None, :, None] + maps[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def _guided_coefficients(image: Tensor, ab: np.ndarray) -> np.ndarray:
    """Fast guided filter (He & Sun, 2015) at the prediction's resolution: per-pixel (A, B) such that
    ``ab ~ A * L + B`` locally, returned as (4, h, w) = (A_a, A_b, B_a, B_b), box-smoothed."""
    _, h, w = ab.shape
    guide = rgb_to_l(_resized_rgb(image, (w, h), cv2.INTER_AREA)) / 100.0
    k = (2 * _GUIDED_RADIUS + 1,) * 2

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i = box(guide)
    var_i = box(guide * guide) - mean_i * mean_i
    coeffs = []
    for p in ab:
        mean_p = box(p)
        a = (box(guide * p) - mean_i * mean_p) / (var_i + _GUIDED_EPS)
        coeffs.append((a, mean_p - a * mean_i))
    return np.stack([box(coeffs[0][0]), box(coeffs[1][0]), box(coeffs[0][1]), box(coeffs[1][1])])


def merge_lab(images: ImagesLike, ab: Tensor, *, upsample: UpsampleMode = "nearest", chroma: float = 1.0,
              out: Tensor | None = None, device: str | torch.device | None = None) -> Tensor:
    """Combine the full-resolution lightness of ``images`` with the predicted ``ab``.

    Args:
        images: the original photos, float (B, H, W, C) in 0..1 (C = 1, 3 or 4; alpha is copied unchanged).
        ab: (B, 2, h, w) predicted chroma (any h, w; resized to H x W).
        upsample: ``nearest`` (official), ``bilinear``, or ``guided`` (bilinear coefficients of a guided
            filter with the full-resolution L as guide: colour edges follow the photo's own edges).
        chroma: multiplies a*, b* (1.0 = official). Below 1 desaturates; above 1 boosts, but never past the
            sRGB gamut edge (per pixel the factor stops where a channel would clip).
        out: optional float32 (B, H, W, 3 or 4) tensor to write into (saves a full-size copy).
        device: None = OpenCV on the CPU (official, exact). A device = the torch steps on that device, in row
            tiles; the result still comes back to the CPU (once per tile).

    Returns:
        (B, H, W, 3) float32 RGB in 0..1 (4 channels if the input had alpha).
    """
    batch = validate_images(images)
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, not {upsample!r}")
    if not 0.0 <= chroma <= 4.0 or not math.isfinite(chroma):
        raise ValueError(f"chroma must be between 0 and 4, not {chroma!r}")
    ab = ab.detach()
    if device is None:
        ab = ab.to("cpu", torch.float32)
    if ab.ndim != 4 or ab.shape[1] != 2 or ab.shape[0] != batch.shape[0]:
        raise InputImageError(f"ab: shape {tuple(ab.shape)} does not match {batch.shape[0]} image(s); expected "
                              f"({batch.shape[0]}, 2, h, w). Connect the ab output of the same Colorize run.")
    b, height, width, channels = batch.shape
    shape = (b, height, width, 4 if channels == 4 else 3)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif tuple(out.shape) != shape or out.dtype != torch.float32 or out.device.type != "cpu":
        raise ValueError(f"out must be a float32 CPU tensor of shape {shape}, got {tuple(out.shape)} {out.dtype}")
    if device is not None:
        source = devicepath.Source(batch, torch.device(device))
        with accel.exact_fp32(source.device, torch.float32):
            return devicepath.merge(source, ab, out, upsample=upsample, chroma=float(chroma))
    out_np = out.numpy()
    tile = max(1, _TILE_PIXELS // width)
    for i in range(b):
        image = batch[i]
        ab_i = ab[i].numpy()
        coeffs = _guided_coefficients(image, ab_i) if upsample == "guided" else None
        rows_idx = _nearest_index(ab_i.shape[1], height) if upsample == "nearest" else None
        cols_idx = _nearest_index(ab_i.shape[2], width) if upsample == "nearest" else None
        for r0 in range(0, height, tile):
            r1 = min(height, r0 + tile)
            lightness = rgb_to_l(_rgb_numpy(image[r0:r1]))
            if upsample == "nearest":
                ab_t = ab_i[:, rows_idx[r0:r1]][:, :, cols_idx]
            elif upsample == "bilinear":
                ab_t = _bilinear_rows(ab_i, height, width, r0, r1)
            else:
                c = _bilinear_rows(coeffs, height, width, r0, r1)
                ab_t = c[:2] * (lightness / 100.0) + c[2:]
            a_t, b_t = ab_t[0], ab_t[1]
            if chroma > 1.0:
                factor = gamut_bounded_scale(lightness, a_t, b_t, chroma)
                a_t, b_t = a_t * factor, b_t * factor
            elif chroma != 1.0:
                a_t, b_t = a_t * np.float32(chroma), b_t * np.float32(chroma)
            out_np[i, r0:r1, :, :3] = lab_to_rgb(lightness, a_t, b_t)
        if channels == 4:
            out[i, ..., 3] = image[..., 3]
    return out


def colorize(
    model: torch.nn.Module,
    images: ImagesLike | Sequence[ImagesLike],
    *,
    input_size: int = 512,
    resize_mode: ResizeMode = "square",
    upsample: UpsampleMode = "nearest",
    chroma: float = 1.0,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    device_path: bool | None = None,
) -> Tensor | list[Tensor]:
    """Colorize photos. Default options reproduce the official DDColor pipeline.

    Args:
        model: from :func:`ddcolor.load_model` (any device / dtype).
        images: float (B, H, W, C) RGB in 0..1 (or (H, W, C)), or a list of such tensors of different sizes.
            Values outside 0..1 are clipped; 1-channel input is grey; a 4th (alpha) channel is kept unchanged.
        input_size: network resolution, a multiple of 32 (official 512; smaller is faster, less detailed).
        resize_mode: ``square`` (official: stretch to S x S) or ``keep_aspect`` (long side S, padded).
        upsample: how ``ab`` reaches full resolution, see :func:`merge_lab`.
        chroma: colour strength, see :func:`merge_lab`.
        batch_size: images per network call (memory vs speed).
        progress: called as ``progress(done, total)`` after every chunk; raising from it cancels.
        device_path: run the full-resolution steps in torch on the model's device (:mod:`ddcolor.devicepath`).
            None (default): only when the model is on CUDA, so on the CPU the output stays the official one.

    Returns:
        The colorized images, same layout and sizes as given, float32 in 0..1 on the CPU.
    """
    check_input_size(input_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputImageError("images: the list is empty. Pass at least one image.")
    batches = [validate_images(item, f"images[{n}]" if len(items) > 1 else "images") for n, item in enumerate(items)]
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, not {upsample!r}")
    if not 0.0 <= chroma <= 4.0 or not math.isfinite(chroma):
        raise ValueError(f"chroma must be between 0 and 4, not {chroma!r}")
    model_device = next(model.parameters()).device
    on_device = model_device.type == "cuda" if device_path is None else bool(device_path)
    total, done = sum(x.shape[0] for x in batches), 0
    results = []
    for batch in batches:
        b, h, w, c = batch.shape
        out = torch.empty((b, h, w, 4 if c == 4 else 3), dtype=torch.float32)
        for start in range(0, b, batch_size):
            chunk = batch[start : start + batch_size]
            target = out[start : start + chunk.shape[0]]
            if on_device:
                _colorize_on_device(model, chunk, target, input_size, resize_mode, upsample, chroma)
            else:
                ab = predict_ab(model, prepare_input(chunk, input_size, resize_mode=resize_mode))
                merge_lab(chunk, ab, upsample=upsample, chroma=chroma, out=target)
            done += chunk.shape[0]
            if progress is not None:
                progress(done, total)
        results.append(out)
    for n, item in enumerate(items):  # (H, W, C) in -> (H, W, C) out
        if getattr(item, "ndim", 4) == 3:
            results[n] = results[n][0]
    return results if isinstance(images, (list, tuple)) else results[0]


def _colorize_on_device(model: torch.nn.Module, chunk: Tensor, out: Tensor, input_size: int,
                        resize_mode: ResizeMode, upsample: UpsampleMode, chroma: float) -> None:
    """One chunk through the device path: the photos go up once (if they fit one tile), ab never leaves."""
    device = next(model.parameters()).device
    _, height, width, _ = chunk.shape
    (sh, sw), (h, w) = model_input_geometry(height, width, input_size, resize_mode)
    shrink = resize_mode == "keep_aspect" and h * w < height * width
    source = devicepath.Source(chunk, device)
    with accel.exact_fp32(device, torch.float32):
        x = devicepath.network_input(source, (h, w), (sh, sw), area=shrink)
        ab = _predict_ab_on_device(model, ModelInput(x, (h, w)))
        devicepath.merge(source, ab, out, upsample=upsample, chroma=float(chroma))


def colorize_uint8(model: torch.nn.Module, images: Tensor, *, input_size: int = 512,
                   resize_mode: ResizeMode = "square", upsample: UpsampleMode = "nearest", chroma: float = 1.0,
                   batch_size: int = 4) -> Tensor:
    """:func:`colorize` for 8-bit photos through the device path: uint8 (B, H, W, C) in, uint8 (B, H, W, 3|4) out.

    A quarter of the float32 bytes cross the bus each way (the photos go up as uint8, the result is rounded on
    the device). Runs on the model's device (also the CPU, with the torch steps).
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        raise _fail("images", f"expected a uint8 tensor, got {getattr(images, 'dtype', type(images).__name__)}",
                    "Use ddcolor.colorize for float images.")
    images = images.unsqueeze(0) if images.ndim == 3 else images
    if images.ndim != 4 or 0 in images.shape:
        raise _fail("images", f"expected (B, H, W, C) or (H, W, C), got shape {tuple(images.shape)}",
                    "Pass a non-empty image batch.")
    if images.shape[-1] not in (1, 3, 4):
        raise _fail("images", f"{images.shape[-1]} channels", "Expected 1 (grey), 3 (RGB) or 4 (RGBA).")
    check_input_size(input_size)
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, not {upsample!r}")
    if not 0.0 <= chroma <= 4.0 or not math.isfinite(chroma):
        raise ValueError(f"chroma must be between 0 and 4, not {chroma!r}")
    b, h, w, c = images.shape
    out = torch.empty((b, h, w, 4 if c == 4 else 3), dtype=torch.uint8)
    for start in range(0, b, batch_size):
        chunk = images[start : start + batch_size]
        _colorize_on_device(model, chunk, out[start : start + chunk.shape[0]], input_size, resize_mode, upsample,
                            chroma)
    return out
