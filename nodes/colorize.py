"""DDColor Colorize (Lab): predicts the colour (Lab a/b) of black-and-white photos."""

from __future__ import annotations

import copy
import logging

import comfy.model_management as mm
import torch
from comfy_api.latest import io
from PIL import Image

from ..ddcolor.errors import DDColorError, InputImageError
from ..ddcolor.presets import MAX_SIZE, MIN_SIZE, check_input_size
from ..ddcolor.preview import Throttle, live_preview
from ._comfy import (
    CATEGORY,
    DDColorAB,
    DDColorModel,
    check_interrupted,
    full_res_device,
    progress_bar,
    raise_non_oom,
    schema,
    unload,
)
from ._outputs import decide_outputs, output_unused
from ._validate import check_number, verdict
from .merge import merge

logger = logging.getLogger("ComfyUI-DDColor")

MAX_BATCH = 64
_PREVIEW = 1  # output slot of `preview`; built only when something is connected to it
# Rough peak activation memory of one 512x512 image through DDColor-large in fp32; it scales with the pixel
# count. Only used to ask ComfyUI to make room; an underestimate is caught by the out-of-memory fallback.
_BYTES_PER_IMAGE_AT_512 = 1.5 * 2**30


def _activation_estimate(chunk: int, input_size: int, dtype: torch.dtype) -> int:
    scale = (input_size / 512) ** 2 * (torch.finfo(dtype).bits / 32)
    return int(chunk * _BYTES_PER_IMAGE_AT_512 * scale)


# On the CPU, images per forward are capped by pixels so that the longest single step inside the forward (where
# Cancel is checked) stays short: 4 images at 512 px, 1 at 1024 px and above (16 at 1024 px held Cancel for
# 115 s and took 10 GiB). Batching does speed up the CPU (4 at 512 px: ~1.9x per photo), hence a pixel budget.
_CPU_PIXELS_PER_STEP = 4 * 512 * 512


def _cpu_chunk(chunk: int, input_size: int) -> int:
    return max(1, min(chunk, _CPU_PIXELS_PER_STEP // (input_size * input_size)))


def _cpu_copy(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` on the CPU (the same object if it already is there); fp16, which the CPU runs badly, becomes fp32."""
    param = next(net.parameters())
    if param.device.type == "cpu" and param.dtype != torch.float16:
        return net
    dtype = torch.float32 if param.dtype == torch.float16 else param.dtype
    return copy.deepcopy(net).to(device="cpu", dtype=dtype)


def _cpu_out_of_memory(exc: RuntimeError) -> bool:
    """PyTorch's CPU allocator failing (a plain RuntimeError, not an OutOfMemoryError)."""
    text = str(exc)
    return "DefaultCPUAllocator" in text or "can't allocate memory" in text


class DDColorColorize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DDColorColorize",
            display_name="DDColor Colorize (Lab)",
            category=CATEGORY,
            search_aliases=["colorize", "colorise", "black and white to color", "old photo", "上色", "黑白照片"],
            description=(
                "Colorizes black-and-white photos with DDColor. The network looks at a resized copy "
                "(input_size) and predicts only colour (Lab a/b); ab goes to DDColor Merge L + ab, which puts "
                "it on the full-resolution original. preview is the finished colour photo (bilinear, chroma 1). "
                "Works through batches in chunks with a progress bar, can be cancelled at any time, and "
                "finishes on the CPU if the GPU runs out of memory."
            ),
            inputs=[
                DDColorModel.Input("model", tooltip="From Load DDColor Model."),
                io.Image.Input("image", tooltip="Black-and-white (or faded colour) photo(s); colour is replaced."),
                io.Int.Input(
                    "input_size",
                    default=512,
                    min=MIN_SIZE,
                    max=MAX_SIZE,
                    step=32,
                    tooltip=(
                        "Size the network works at (multiple of 32). 512 is the official setting; portraits "
                        "480-672, buildings and landscapes 960-1280 (see DDColor Resize by Preset). Larger needs "
                        "more memory and time."
                    ),
                ),
                io.Boolean.Input(
                    "keep_aspect",
                    default=False,
                    tooltip=(
                        "Off: the network sees a square (official DDColor). On: it keeps the photo's shape "
                        "(long side = input_size), which helps very wide or tall photos."
                    ),
                ),
                io.Int.Input(
                    "batch_size",
                    default=4,
                    min=1,
                    max=MAX_BATCH,
                    tooltip=(
                        "Images per step. Lower it on small GPUs; it is halved automatically when memory runs out."
                    ),
                ),
                io.Boolean.Input(
                    "offload_after_run",
                    default=False,
                    tooltip="Move the model out of VRAM when done (frees memory for other models, reloads next run).",
                ),
            ],
            outputs=[
                DDColorAB.Output("ab", display_name="ab",
                                 tooltip="Predicted colour (Lab a/b) at input_size, for DDColor Merge L + ab."),
                io.Image.Output("preview", display_name="preview",
                                tooltip="The colorized photo at full resolution (bilinear colour, chroma 1)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, input_size=None, batch_size=None) -> bool | str:
        # inputs named here skip ComfyUI's own min/max checks, so each is checked in full
        return verdict(None if input_size is None else check_input_size(input_size),
                       check_number("batch_size", batch_size, 1, MAX_BATCH, whole=True))

    @classmethod
    def fingerprint_inputs(cls, **_inputs) -> str | None:
        # whether `preview` is connected is part of the cache key, so skipping it is never served stale
        return decide_outputs(_PREVIEW)

    @staticmethod
    def _check_widgets(input_size: int, batch_size: int) -> None:
        problem = check_input_size(input_size)
        if problem:
            raise DDColorError(problem)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
            raise DDColorError(f"batch_size = {batch_size!r} must be a whole number from 1 to {MAX_BATCH}; "
                               "4 suits 8 GB GPUs.")

    @classmethod
    def execute(cls, model, image: torch.Tensor, input_size: int = 512, keep_aspect: bool = False,
                batch_size: int = 4, offload_after_run: bool = False) -> io.NodeOutput:
        from .. import ddcolor

        cls._check_widgets(input_size, batch_size)
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] == 0:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InputImageError(f"image: expected an IMAGE batch (B, H, W, C), got {shape}.")
        patcher = model
        total = int(image.shape[0])
        resize_mode = "keep_aspect" if keep_aspect else "square"
        chunk = min(int(batch_size), total)
        on_cpu = mm.is_device_cpu(patcher.load_device)
        if on_cpu:
            chunk = _cpu_chunk(chunk, input_size)
        dtype = next(patcher.model.parameters()).dtype
        mm.load_models_gpu([patcher], memory_required=_activation_estimate(chunk, input_size, dtype),
                           force_full_load=True)
        net = patcher.model
        bar = progress_bar(total)
        live = Throttle()  # the latest finished photo, small, in the node as the bar moves (a few per second)
        ab_all: torch.Tensor | None = None  # filled chunk by chunk: a long clip's ab is held once, never twice
        start = 0
        device = None  # where prepare / preview run: the model's GPU, or None for OpenCV on the CPU
        try:
            while start < total:
                check_interrupted()
                stop = min(start + chunk, total)
                try:
                    # on a GPU the resize / grey steps run there too (ddcolor.devicepath); on the CPU: OpenCV
                    device = None if on_cpu else full_res_device(next(net.parameters()).device)
                    model_input = ddcolor.prepare_input(image[start:stop], input_size=input_size,
                                                        resize_mode=resize_mode, device=device)
                    with ddcolor.step_callback(check_interrupted):  # Cancel also works inside a forward
                        ab = ddcolor.predict_ab(net, model_input)
                except RuntimeError as exc:
                    if not _cpu_out_of_memory(exc):
                        raise_non_oom(exc)
                    model_input = None
                    mm.soft_empty_cache()
                    if chunk > 1:
                        chunk = max(1, chunk // 2)
                        logger.warning("DDColor: out of memory at input_size %d; retrying with %d image(s) per "
                                       "step.", input_size, chunk)
                        continue
                    if on_cpu:
                        raise DDColorError(
                            f"Out of memory colorizing one image at input_size {input_size}, even on the CPU. "
                            "Lower input_size (512 is the official setting) or close other programs."
                        ) from exc
                    logger.warning("DDColor: the GPU is out of memory even for one image at input_size %d; "
                                   "finishing on the CPU (slower). Lower input_size or free VRAM to stay on the "
                                   "GPU.", input_size)
                    unload(patcher)
                    net = _cpu_copy(patcher.model)
                    on_cpu = True
                    chunk = _cpu_chunk(chunk, input_size)
                    continue
                if ab_all is None:
                    ab_all = torch.empty((total, *ab.shape[1:]), dtype=torch.float32)
                ab_all[start:stop].copy_(ab.detach())
                picture = live_preview(image[stop - 1], ab_all[stop - 1]) if live.ready(last=stop == total) else None
                bar.update_absolute(stop, total, preview=None if picture is None else
                                    ("JPEG", Image.fromarray(picture.numpy()), None))
                start = stop
        finally:
            if offload_after_run:
                unload(patcher)
        ab = ab_all
        if output_unused(_PREVIEW):  # nothing takes the full-resolution preview: don't build it
            return io.NodeOutput(ab, None)
        preview = merge(image, ab, "bilinear", 1.0, None if on_cpu else device)
        return io.NodeOutput(ab, preview)
