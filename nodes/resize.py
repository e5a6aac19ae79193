"""DDColor Resize by Preset: picks the model-input size for a photo's subject (portrait / building / custom)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..ddcolor.errors import InputImageError
from ..ddcolor.presets import MAX_SIZE, MIN_SIZE, PRESET_WINDOWS, PRESETS, check_input_size, choose_input_size
from ._comfy import CATEGORY, schema
from ._validate import check_choice, verdict

_P_LO, _P_HI = PRESET_WINDOWS["portrait"]
_B_LO, _B_HI = PRESET_WINDOWS["building"]


class DDColorResizeByPreset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DDColorResizeByPreset",
            display_name="DDColor Resize by Preset",
            category=CATEGORY,
            search_aliases=["ddcolor size", "portrait", "building", "model size"],
            description=(
                "Chooses the size the colorization network works at (input_size) from what the photo shows; "
                "the photo itself passes through unchanged and keeps its full resolution. "
                f"portrait (faces): {_P_LO}-{_P_HI} px; building/landscape: {_B_LO}-{_B_HI} px; custom: "
                "custom_size. Rule: start from the photo's short side rounded to a multiple of 32, keep it in the "
                "preset's range, but never above the photo's long side (upscaling a small photo adds nothing). "
                "Connect input_size and keep_aspect to DDColor Colorize (Lab)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The black-and-white photo(s); only their size is used."),
                io.Combo.Input(
                    "preset",
                    options=list(PRESETS),
                    default="portrait",
                    tooltip=(
                        f"portrait: people and faces ({_P_LO}-{_P_HI} px, natural skin tones). building: "
                        f"architecture, streets, landscapes ({_B_LO}-{_B_HI} px, more detail). custom: use "
                        "custom_size."
                    ),
                ),
                io.Int.Input(
                    "custom_size",
                    default=512,
                    min=MIN_SIZE,
                    max=MAX_SIZE,
                    step=32,
                    tooltip="Model-input size used when preset is custom (a multiple of 32).",
                ),
                io.Boolean.Input(
                    "keep_aspect",
                    default=False,
                    tooltip=(
                        "Passed on to DDColor Colorize. Off: the network sees a square (official DDColor). "
                        "On: it sees the photo's own shape (long side = input_size), better for panoramas."
                    ),
                ),
            ],
            # output ids must differ from input ids (ComfyUI 0.3.x); the names users see are display_name
            outputs=[
                io.Image.Output("image_out", display_name="image", tooltip="The original photo, unchanged."),
                io.Int.Output("input_size", display_name="input_size",
                              tooltip="Model-input size in pixels (multiple of 32)."),
                io.Boolean.Output("keep_aspect_out", display_name="keep_aspect", tooltip="The keep_aspect setting."),
            ],
        )

    @classmethod
    def validate_inputs(cls, preset=None, custom_size=None) -> bool | str:
        return verdict(check_choice("preset", preset, PRESETS),
                       None if custom_size is None else check_input_size(custom_size, "custom_size"))

    @classmethod
    def execute(cls, image: torch.Tensor, preset: str, custom_size: int = 512,
                keep_aspect: bool = False) -> io.NodeOutput:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] == 0:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InputImageError(f"image: expected an IMAGE batch (B, H, W, C), got {shape}.")
        size = choose_input_size(int(image.shape[1]), int(image.shape[2]), preset, custom_size)
        return io.NodeOutput(image, size, bool(keep_aspect))
