"""DDColor Merge L + ab: puts predicted colour onto the full-resolution original."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..ddcolor.errors import InputImageError
from ._comfy import CATEGORY, DDColorAB, full_res_device, raise_non_oom, schema
from ._validate import check_choice, check_number, verdict

logger = logging.getLogger("ComfyUI-DDColor")

UPSAMPLE_MODES = ("nearest", "bilinear", "guided")
CHROMA_MIN, CHROMA_MAX = 0.0, 2.0


def merge(image: torch.Tensor, ab: torch.Tensor, upsample: str, chroma: float,
          device: torch.device | None) -> torch.Tensor:
    """``ddcolor.merge_lab`` on ``device`` (IMAGE in and out on the CPU); out of GPU memory -> on the CPU."""
    from .. import ddcolor

    if device is not None:
        try:
            return ddcolor.merge_lab(image, ab, upsample=upsample, chroma=chroma, device=device)
        except RuntimeError as exc:
            raise_non_oom(exc)
            mm.soft_empty_cache()
            logger.warning("DDColor: the GPU is out of memory for the full-resolution merge; doing it on the CPU.")
    return ddcolor.merge_lab(image, ab, upsample=upsample, chroma=chroma)


class DDColorMergeLab(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DDColorMergeLab",
            display_name="DDColor Merge L + ab",
            category=CATEGORY,
            search_aliases=["lab merge", "chroma", "colorize merge"],
            description=(
                "Keeps the brightness (L) of the original photo at full resolution and adds the colour (a/b) "
                "predicted by DDColor Colorize (Lab), scaled up to the photo's size. No detail of the original "
                "is lost; only its colour changes."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The original photo at full resolution (the same batch as ab)."),
                DDColorAB.Input("ab", tooltip="Colour from DDColor Colorize (Lab), same number of images."),
                io.Combo.Input(
                    "upsample",
                    options=list(UPSAMPLE_MODES),
                    default="bilinear",
                    tooltip=(
                        "How colour is scaled to the photo's size. nearest: as the official DDColor (can look "
                        "blocky on big photos); bilinear: smooth; guided: follows the photo's edges (least colour "
                        "bleeding, a little slower)."
                    ),
                ),
                io.Float.Input(
                    "chroma",
                    default=1.0,
                    min=CHROMA_MIN,
                    max=CHROMA_MAX,
                    step=0.05,
                    tooltip="Colour strength: 0 = black and white, 1 = as predicted, 2 = twice as saturated.",
                ),
            ],
            outputs=[io.Image.Output("image_out", display_name="image",  # ids must differ from inputs
                                     tooltip="The colorized photo at the original size.")],
        )

    @classmethod
    def validate_inputs(cls, upsample=None, chroma=None) -> bool | str:
        return verdict(check_choice("upsample", upsample, UPSAMPLE_MODES),
                       check_number("chroma", chroma, CHROMA_MIN, CHROMA_MAX))

    @classmethod
    def execute(cls, image: torch.Tensor, ab: torch.Tensor, upsample: str = "bilinear",
                chroma: float = 1.0) -> io.NodeOutput:
        if not isinstance(ab, torch.Tensor) or ab.ndim != 4 or ab.shape[1] != 2:
            shape = tuple(ab.shape) if isinstance(ab, torch.Tensor) else type(ab).__name__
            raise InputImageError(f"ab: expected colour from DDColor Colorize (Lab), shape (B, 2, h, w); got {shape}.")
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InputImageError(f"image: expected an IMAGE batch (B, H, W, C), got {shape}.")
        if image.shape[0] != ab.shape[0]:
            raise InputImageError(
                f"image has {image.shape[0]} picture(s) but ab has {ab.shape[0]}: connect the same images that "
                "went into DDColor Colorize (Lab) to this node's image input."
            )
        return io.NodeOutput(merge(image, ab, upsample, float(chroma), full_res_device()))
