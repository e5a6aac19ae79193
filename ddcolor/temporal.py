"""Colour that stays steady from frame to frame: motion-compensated smoothing of predicted ab over a clip.

DDColor colours every frame alone, so the same coat or wall gets a slightly different a/b in every frame and the
video flickers. :func:`smooth_ab` removes that flicker from the predicted ab (at the network's resolution, before
DDColor Merge L + ab puts it on the full-resolution frames):

1. For each frame ``t`` it takes the lightness L of the frame, resized to the ab resolution (the network saw the
   same picture), and estimates the motion from frame ``t`` back to frame ``t - 1`` with an optical flow that
   needs no weights (see *Optical flow* below).
2. It warps the previous *stabilised* ab onto frame ``t`` along that motion and blends it with the current
   prediction: ``s_t = p_t + strength * confidence * (warp(s_{t-1}) - p_t)``. ``confidence`` (0..1, per pixel)
   says how well the warp explains frame ``t``: the warped L must match the frame's own L (above the frame's
   noise level). Occluded, uncovered or badly matched pixels, and pixels whose motion comes from outside the
   frame, get confidence 0 and take the current prediction, so colour does not smear across moving edges.
3. A scene cut (most of the frame not explained by any motion from the previous one) starts afresh: the first
   frame of a new shot is the per-frame prediction itself. The cuts are reported.

**Forward only, no look-ahead** (``direction="forward"``, what the node uses). The alternative, averaging a forward
and a backward pass (``direction="both"``), was measured on the synthetic clip of the tests
(``benchmarks/bench_temporal.py`` prints both): at strength 0.75 it leaves 0.19x of the per-frame flicker against
0.22x, but it needs a second optical flow per frame (about twice the time) and it mixes later frames of a shot
into the shot's first frame (up to 7 levels of a/b off its own colour right after a cut). Forward only keeps the
first frame of every shot exactly as predicted and needs one flow per frame.

**Optical flow** (``flow=``): ``dis`` is OpenCV's DIS (CPU, 16 frames at a time in parallel threads); ``torch`` is
:func:`ddcolor.flow.dense_flow` (pyramidal Lucas–Kanade, batched over the chunk's frame pairs, on ``device``).
``auto`` (the default, what the node uses) takes ``torch`` when ``device`` is a CUDA GPU, where DIS on the CPU
would set the pace, and ``dis`` otherwise, so the CPU output is exactly what it was before the torch flow existed.
With the torch flow a cut is judged by the flow's smooth part (its average over a 3 x 3 grid of the frame): a flow
fitted pixel by pixel also matches half of an unrelated picture, a pan, zoom or tilt is smooth. Measured on the
synthetic clip of the tests (``benchmarks/bench_temporal.py``, strength 0.75): flicker 0.215x of per-frame (DIS
0.221x), error against the true moving colour 0.53x (DIS 0.56x), the cut found with a score of 0.81 (DIS 0.83,
threshold 0.6); the flow alone is 0.20 px off the true motion on average (DIS 0.21 px; the motion is 2.8 px per
frame). On a 2-core CPU the torch flow costs far more than DIS (it is meant for the GPU); its GPU speed is
measured by ``scripts/gpu_run.sh``.

``strength`` 0 returns the input ab unchanged (bit-identical). Memory: one output ab (the size of the input ab)
plus a few frames of working memory, whatever the clip's length; the frames are read one chunk at a time. The
lightness is computed on the CPU (in threads, the next chunk's while the current one blends); warping, blending
and the torch flow run on ``device`` (e.g. the model's GPU), which the host waits for once per chunk.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .colorspace import rgb_to_l
from .errors import InputImageError
from .flow import dense_flow, sampling_grid

Direction = Literal["forward", "both"]
DIRECTIONS: tuple[str, ...] = ("forward", "both")
FlowMethod = Literal["auto", "dis", "torch"]
FLOWS: tuple[str, ...] = ("auto", "dis", "torch")

MAX_STRENGTH = 0.95
"""Above this the colour would hardly follow real changes any more (it settles over ~20 frames at 0.95)."""

_ERROR_BLUR = 5  # box size (ab pixels) over which the warp error is averaged: single noisy pixels do not count
_NOISE_FLOOR_MAX = 8.0  # L* units: the per-frame error floor (film grain, noise) is capped here
_CONFIDENCE_SCALE = 6.0  # L* units above the noise floor where confidence has fallen to exp(-1)
_CUT_ERROR = 8.0  # L* units: a pixel this badly explained by the motion counts towards a scene cut
_ASPECT_TOLERANCE = 0.05
_CHUNK = 16  # frames whose motion is computed together (in parallel threads)
_FLOW_WORKERS = 8
_CUT_FLOW_CELLS = 3  # torch flow: cuts are judged with the flow averaged over this grid of the frame
_TORCH_FLOW_PIXELS = 1 << 22  # the torch flow takes this many pixels of frame pairs at once (memory bound)


@dataclass(frozen=True)
class TemporalResult:
    """What :func:`smooth_ab` returns."""

    ab: Tensor
    """(B, 2, h, w) float32 CPU: the stabilised ab (the input tensor itself when nothing was done)."""
    cuts: tuple[int, ...]
    """Indices of the frames that start a new shot (frame 0 is not listed)."""
    cut_scores: tuple[float, ...]
    """Per frame: the share (0..1) of frame ``t`` that no motion from frame ``t - 1`` explains (0.0 for frame 0)."""

    def report(self) -> str:
        """One line for people: how many frames and shots, and where the cuts are."""
        frames = self.ab.shape[0]
        if not self.cuts:
            return f"{frames} frame(s), 1 shot: no scene cut found."
        if len(self.cuts) == frames - 1:
            return (f"{frames} frame(s), every one a new shot: nothing was smoothed. If this is one continuous shot, "
                    "lower scene_cut_sensitivity.")
        shown = ", ".join(str(c) for c in self.cuts[:20]) + (", ..." if len(self.cuts) > 20 else "")
        return f"{frames} frame(s), {len(self.cuts) + 1} shots: scene cuts before frame(s) {shown} (counting from 0)."


def cut_threshold(sensitivity: float) -> float:
    """Share of a frame that must be unexplained by motion for a cut: 0.6 at sensitivity 0.5, never at 0."""
    return 1.0 - 0.8 * float(sensitivity)


def resolve_flow(flow: FlowMethod, device: torch.device | str) -> str:
    """``dis`` or ``torch``: the optical flow :func:`smooth_ab` uses; ``auto`` is ``torch`` on a CUDA device."""
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {FLOWS}, not {flow!r}")
    if flow == "auto":
        return "torch" if torch.device(device).type == "cuda" else "dis"
    return flow


def _check_ab(ab: Tensor) -> Tensor:
    if not isinstance(ab, Tensor) or ab.ndim != 4 or ab.shape[1] != 2 or ab.shape[0] == 0:
        shape = tuple(ab.shape) if isinstance(ab, Tensor) else type(ab).__name__
        raise InputImageError(f"ab: expected colour from DDColor Colorize (Lab), shape (frames, 2, h, w); got {shape}. "
                              "Connect the ab output of DDColor Colorize (Lab).")
    if not ab.is_floating_point():
        raise InputImageError(f"ab: dtype {ab.dtype} is not floating point. Connect the ab output of DDColor "
                              "Colorize (Lab).")
    return ab


def _check_images(images: Tensor, ab: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputImageError(f"image: expected the video frames as an IMAGE batch (frames, H, W, C); got {shape}.")
    frames, height, width, channels = images.shape
    if channels not in (1, 3, 4):
        raise InputImageError(f"image: {channels} channels per frame. Expected 1 (grey), 3 (RGB) or 4 (RGBA, the "
                              "alpha channel is ignored here).")
    if not images.is_floating_point():
        raise InputImageError(f"image: dtype {images.dtype} is not floating point. Pass ComfyUI IMAGE frames "
                              "(float, 0..1).")
    if frames != ab.shape[0]:
        raise InputImageError(
            f"image has {frames} frame(s) but ab has {ab.shape[0]}: connect the same frames that went into DDColor "
            "Colorize (Lab) to this node's image input (and nothing that drops or adds frames in between).")
    h, w = ab.shape[2:]
    # keep_aspect: ab has the frames' shape; a square ab fits any frame (the official square mode)
    if h != w and abs((w / h) / (width / height) - 1.0) > _ASPECT_TOLERANCE + 1.0 / min(h, w):
        raise InputImageError(
            f"ab is {w}x{h} (width x height) but the frames are {width}x{height}: a different picture shape. "
            "Connect the ab that DDColor Colorize (Lab) made from these same frames.")


def _small_lightness(frame: Tensor, size_wh: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 L* (0..100) of one (H, W, C) frame, resized to ``size_wh`` with area averaging."""
    arr = frame.detach().to("cpu", torch.float32).numpy()
    if arr.shape[-1] == 4:
        arr = arr[..., :3]  # alpha plays no part in the colour
    small = cv2.resize(np.ascontiguousarray(arr), size_wh, interpolation=cv2.INTER_AREA)
    small = small.reshape(size_wh[1], size_wh[0], -1)
    if small.shape[-1] == 1:
        small = np.repeat(small, 3, axis=-1)
    return rgb_to_l(np.clip(small, 0.0, 1.0))


_local = threading.local()


def _flow(cur_l: np.ndarray, prev_l: np.ndarray) -> np.ndarray:
    """DIS optical flow on L* (OpenCV, CPU; one DIS object per thread): (h, w, 2) offsets such that
    ``cur(x) ~ prev(x + flow(x))``."""
    dis = getattr(_local, "dis", None)
    if dis is None:
        dis = _local.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    cur = np.clip(cur_l * 2.55, 0, 255).astype(np.uint8)
    prev = np.clip(prev_l * 2.55, 0, 255).astype(np.uint8)
    return dis.calc(cur, prev, None)


def _batched_flow(afters: Tensor, befores: Tensor, per_batch: int) -> Tensor:
    return torch.cat([dense_flow(afters[i:i + per_batch], befores[i:i + per_batch])
                      for i in range(0, afters.shape[0], per_batch)])


def _torch_flows(cur: Tensor, prev_l: Tensor | None, per_batch: int
                 ) -> tuple[list[Tensor | None], list[Tensor | None], int]:
    """The flows of the chunk whose L is ``cur`` (frames, h, w) (each frame back to the one before; None for the
    first frame of the pass), from :func:`ddcolor.flow.dense_flow`, batched: a few large tensor operations per
    chunk; their smooth parts (for cuts); and the number of pairs per batch to use from now on (``per_batch``, or
    1 after running out of GPU memory)."""
    befores = cur[:-1] if prev_l is None else torch.cat([prev_l[None], cur[:-1]])
    afters = cur[1:] if prev_l is None else cur
    h, w = cur.shape[1:]
    try:
        flows = _batched_flow(afters, befores, per_batch)
    except torch.cuda.OutOfMemoryError:
        if per_batch == 1:
            raise
        torch.cuda.empty_cache()  # a small GPU shared with the model: one pair at a time (the same numbers)
        per_batch = 1
        flows = _batched_flow(afters, befores, per_batch)
    # Cuts are judged with the flow's smooth part (averaged over a _CUT_FLOW_CELLS grid of the frame): a flow
    # fitted pixel by pixel also matches much of an unrelated picture, a pan, zoom or tilt stays smooth.
    cells = (min(h, _CUT_FLOW_CELLS), min(w, _CUT_FLOW_CELLS))
    coarse = F.interpolate(flows.permute(0, 3, 1, 2), size=cells, mode="area")
    coarse = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    listed: list[Tensor | None] = list(flows.unbind(0))
    smooth: list[Tensor | None] = list(coarse.unbind(0))
    if prev_l is None:
        listed.insert(0, None)
        smooth.insert(0, None)
    return listed, smooth, per_batch


def _lightness_checked(images: Tensor, t: int, size_wh: tuple[int, int]) -> np.ndarray:
    lightness = _small_lightness(images[t], size_wh)
    if not np.isfinite(lightness).all():
        raise InputImageError(f"image[{t}] (frame {t}, counting from 0) contains NaN or infinite values. "
                              "Fix the node that produced the frames.")
    return lightness


def _unexplained_share(error: Tensor, inside: Tensor) -> Tensor:
    """0-d float64 tensor: the share of badly matched pixels (blurred L* error above ``_CUT_ERROR``) among those the
    motion can reach; 1.0 when it reaches almost none. Stays on the device (no host synchronisation)."""
    reachable = inside.sum().double()
    bad = ((error > _CUT_ERROR) & inside).sum().double()
    share = bad / reachable.clamp_min(1.0)
    return torch.where(reachable > 0.05 * inside.numel(), share, torch.ones_like(share))


def _warp_error(prev: Tensor, cur_l: Tensor, flow: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``prev`` (C, h, w; its last channel is L*) warped along ``flow``; the blurred |L* error| against ``cur_l``;
    and where the motion comes from inside the previous frame."""
    grid = sampling_grid(flow[None])  # (1, h, w, 2)
    warped = F.grid_sample(prev[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    inside = (grid.abs() <= 1.0).all(dim=-1)[0]  # (h, w)
    error = (warped[-1] - cur_l).abs()[None, None]
    error = F.avg_pool2d(error, _ERROR_BLUR, stride=1, padding=_ERROR_BLUR // 2, count_include_pad=False)[0, 0]
    return warped, error, inside


def _blend_step(prev_state: Tensor, prev_l: Tensor, cur_ab: Tensor, cur_l: Tensor, flow: Tensor,
                strength: float, cut_flow: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One step on ``device``: (stabilised ab of the current frame (2, h, w), share of the frame not explained as a
    0-d float64 tensor). Nothing here waits for the device.

    prev_state (2, h, w), prev_l / cur_l (h, w) L*, cur_ab (2, h, w), flow (h, w, 2) from current to previous.
    ``cut_flow``: measure the unexplained share with this flow instead (the torch flow's smooth part).
    """
    warped, error, inside = _warp_error(torch.cat([prev_state, prev_l[None]], dim=0), cur_l, flow)
    # Unexplained share (for cut detection): badly matched pixels among those the motion can reach.
    if cut_flow is None:
        unexplained = _unexplained_share(error, inside)
    else:
        unexplained = _unexplained_share(*_warp_error(prev_l[None], cur_l, cut_flow)[1:])
    # The frame's own noise (grain) makes even a perfect warp differ a little: measure it as the median error
    # (of the reachable pixels; the lower middle value, as Tensor.median gives it).
    median = torch.where(inside, error, torch.full_like(error, math.nan)).flatten().nanmedian()
    floor = torch.where(inside.any(), median, torch.zeros_like(median)).clamp_max(_NOISE_FLOOR_MAX)
    excess = (error - floor).clamp_min(0.0)
    confidence = torch.exp(-(excess / _CONFIDENCE_SCALE) ** 2) * inside
    weight = (strength * confidence)[None]
    return cur_ab + weight * (warped[:2] - cur_ab), unexplained


def _check_finite_ab(chunk_ab: Tensor, frames: list[int]) -> None:
    """``chunk_ab``: the ab of ``frames`` (on the CPU, where the check costs no device synchronisation)."""
    finite = torch.isfinite(chunk_ab).flatten(1).all(dim=1)
    if not bool(finite.all()):
        t = frames[int((~finite).nonzero()[0, 0])]
        raise InputImageError(
            f"ab[{t}] (frame {t}, counting from 0) contains NaN or infinite values: the colour "
            "prediction failed for that frame. Run DDColor Colorize (Lab) again with precision fp32 "
            "in Load DDColor Model.")


def _pass(images: Tensor, ab: Tensor, out: Tensor, order: list[int], strength: float, threshold: float,
          device: torch.device, restart: set[int] | None, average: bool, torch_flow: bool,
          tick: Callable[[], None]) -> tuple[list[int], list[float]]:
    """One recursive pass over the frames in ``order``; writes ``out[t]`` (or averages into it).

    ``restart``: frames where the pass starts afresh (given), or None to detect cuts (returned, with scores).
    The device work of a chunk is queued without waiting; the host reads the chunk's results once at its end, while
    the threads already prepare the next chunk's lightness (and DIS flow).
    """
    h, w = ab.shape[2:]
    cuts: list[int] = []
    scores: list[float] = [0.0] * images.shape[0]
    prev_state: Tensor | None = None
    prev_l: Tensor | None = None
    workers = min(_FLOW_WORKERS, os.cpu_count() or 1)
    chunks = [list(range(first, min(first + _CHUNK, len(order)))) for first in range(0, len(order), _CHUNK)]
    flow_batch = max(1, _TORCH_FLOW_PIXELS // (h * w))  # frame pairs per torch flow call

    def prepare(steps: list[int], before: np.ndarray | None) -> tuple[list[np.ndarray], list]:
        # The motion of a chunk of frames depends only on the frames: OpenCV computes it in parallel threads
        # (it releases the GIL). Memory: one or two chunks of L and flow.
        lights = list(pool.map(lambda step: _lightness_checked(images, order[step], (w, h)), steps))
        if torch_flow:
            return lights, []
        befores = [before, *lights[:-1]]
        return lights, list(pool.map(lambda cur, prev: None if prev is None else _flow(cur, prev), lights, befores))

    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
        upcoming = ahead.submit(prepare, chunks[0], None)
        for number, steps in enumerate(chunks):
            lights, flows = upcoming.result()
            if number + 1 < len(chunks):
                upcoming = ahead.submit(prepare, chunks[number + 1], lights[-1])
            frames = [order[step] for step in steps]
            chunk_ab = ab[frames]
            _check_finite_ab(chunk_ab, frames)
            chunk_ab = chunk_ab.to(device, torch.float32)
            cur = torch.from_numpy(np.stack(lights)).to(device)
            device_lights = list(cur.unbind(0))
            if torch_flow:
                flows, cut_flows, flow_batch = _torch_flows(cur, prev_l, flow_batch)
            else:
                cut_flows = [None] * len(flows)
            states: list[Tensor] = []
            unexplained: dict[int, Tensor] = {}
            for index, (step, t) in enumerate(zip(steps, frames, strict=True)):
                cur_ab, cur_l = chunk_ab[index], device_lights[index]
                new_shot = step == 0
                if not new_shot and restart is not None:
                    new_shot = (t in restart) if order[0] == 0 else (order[step - 1] in restart)
                if new_shot:
                    state = cur_ab
                else:
                    flow = flows[index]
                    if not torch_flow:
                        flow = torch.from_numpy(flow).to(device)
                    state, share = _blend_step(prev_state, prev_l, cur_ab, cur_l, flow, strength, cut_flows[index])
                    if restart is None:
                        unexplained[t] = share
                        state = torch.where(share > threshold, cur_ab, state)  # a cut: start afresh
                states.append(state)
                prev_l, prev_state = cur_l, state
                tick()
            # one transfer and one wait per chunk
            results = torch.stack(states).to("cpu", torch.float32)
            if unexplained:
                values = torch.stack(list(unexplained.values())).cpu().tolist()
                for t, value in zip(unexplained, values, strict=True):
                    scores[t] = value
                    if value > threshold:
                        cuts.append(t)
            for index, t in enumerate(frames):
                if average:
                    out[t].add_(results[index]).mul_(0.5)
                else:
                    out[t].copy_(results[index])
    return cuts, scores


def smooth_ab(images: Tensor, ab: Tensor, *, strength: float = 0.75, scene_cut_sensitivity: float = 0.5,
              direction: Direction = "forward", device: torch.device | str = "cpu", flow: FlowMethod = "auto",
              progress: Callable[[int, int], None] | None = None) -> TemporalResult:
    """Stabilise predicted ab over a clip (see the module docstring).

    Args:
        images: the frames, float (B, H, W, C) in 0..1 (ComfyUI IMAGE; C = 1, 3 or 4, alpha ignored), any size.
        ab: (B, 2, h, w) predicted ab of the same frames (from :func:`ddcolor.predict_ab`).
        strength: 0..0.95, the share of colour carried over from the motion-compensated previous frame where the
            motion explains the picture. 0 returns ``ab`` itself (bit-identical).
        scene_cut_sensitivity: 0..1. Higher finds more cuts (a cut = more than ``1 - 0.8 * sensitivity`` of the
            frame unexplained by motion); 0 never cuts.
        direction: ``forward`` (default) or ``both`` (average of a forward and a backward pass; for comparison).
        device: where warping and blending run (and the torch optical flow).
        flow: the optical flow: ``dis`` (OpenCV DIS on the CPU, in threads), ``torch``
            (:func:`ddcolor.flow.dense_flow` on ``device``, batched), or ``auto`` (default): ``torch`` when
            ``device`` is a CUDA GPU, ``dis`` otherwise.
        progress: called as ``progress(done, total)`` after every frame; raising from it cancels.

    Returns:
        :class:`TemporalResult` with the stabilised ab (float32 CPU) and the scene cuts.
    """
    ab = _check_ab(ab)
    _check_images(images, ab)
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0.0 <= strength <= MAX_STRENGTH):
        raise InputImageError(f"strength = {strength!r} must be between 0 and {MAX_STRENGTH} "
                              "(0 = off, 0.75 = default).")
    if not (isinstance(scene_cut_sensitivity, (int, float)) and 0.0 <= scene_cut_sensitivity <= 1.0):
        raise InputImageError(f"scene_cut_sensitivity = {scene_cut_sensitivity!r} must be between 0 and 1 "
                              "(0.5 = default).")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    method = resolve_flow(flow, device)
    frames = int(ab.shape[0])
    if strength == 0.0 or frames == 1:
        return TemporalResult(ab, (), (0.0,) * frames)
    device = torch.device(device)
    torch_flow = method == "torch"
    out = torch.empty(ab.shape, dtype=torch.float32)
    passes = 2 if direction == "both" else 1
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, frames * passes)

    threshold = cut_threshold(scene_cut_sensitivity)
    with torch.inference_mode():
        cuts, scores = _pass(images, ab, out, list(range(frames)), float(strength), threshold, device, None,
                             False, torch_flow, tick)
        if direction == "both":
            _pass(images, ab, out, list(range(frames - 1, -1, -1)), float(strength), threshold, device,
                  set(cuts), True, torch_flow, tick)
    return TemporalResult(out, tuple(cuts), tuple(scores))
