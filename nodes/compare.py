"""DDColor Compare: before/after picture (side by side, or split at a position).

Besides its IMAGE output the node saves the two pictures it compares as temp images (UI output keys
``before_images`` and ``after_images``); the pack's graph-editor extension (``web/js/ddcolor_compare.js``) shows
them in the node with a divider to drag. API users get the same IMAGE output as before.
"""

from __future__ import annotations

import secrets

import torch
from comfy_api.latest import io, ui

from ..ddcolor.compare import MODES, compare_images
from ..ddcolor.preview import comparer_pair
from ._comfy import CATEGORY, schema
from ._validate import check_choice, check_number, verdict

UI_KEYS = ("before_images", "after_images")


def _save_temp(images: torch.Tensor, label: str) -> list[dict]:
    # a fresh name per run, as ComfyUI's Preview Image does, so the browser never shows a cached older picture
    prefix = f"ddcolor_compare_{label}_{secrets.token_hex(4)}"
    saved = ui.ImageSaveHelper.save_images(images, filename_prefix=prefix, folder_type=io.FolderType.temp,
                                           cls=None, compress_level=1)
    return [dict(item) for item in saved]


class DDColorCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DDColorCompare",
            display_name="DDColor Compare",
            category=CATEGORY,
            search_aliases=["before after", "compare", "split view"],
            # an output node: a re-run served from ComfyUI's cache still sends the pictures to the comparer (a
            # cached node that is not an output is never visited), and it runs without anything connected
            is_output_node=True,
            description=(
                "Makes one picture to judge a colorization: the original and the result side by side, or split "
                "at a position (a white line marks the split). before is resized to after's size if needed. "
                "After a run the node shows both in the graph editor: drag across the picture to move the divider, "
                "click to switch between before and after, the arrow keys move the divider when the node is "
                "selected, ‹ › pick the photo of a batch."
            ),
            inputs=[
                io.Image.Input("before", tooltip="The black-and-white original."),
                io.Image.Input("after", tooltip="The colorized result (its size is used)."),
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default="side_by_side",
                    tooltip="side_by_side: before | after (twice as wide). split: before left, after right.",
                ),
                io.Float.Input(
                    "split_position",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="split mode: where the split is, 0 = left edge, 1 = right edge.",
                ),
            ],
            outputs=[io.Image.Output("image", display_name="image", tooltip="The comparison picture.")],
        )

    @classmethod
    def validate_inputs(cls, mode=None, split_position=None) -> bool | str:
        return verdict(check_choice("mode", mode, MODES), check_number("split_position", split_position, 0.0, 1.0))

    @classmethod
    def execute(cls, before: torch.Tensor, after: torch.Tensor, mode: str = "side_by_side",
                split_position: float = 0.5) -> io.NodeOutput:
        picture = compare_images(before, after, mode=mode, split_position=float(split_position))
        shown_before, shown_after = comparer_pair(before, after)
        return io.NodeOutput(picture, ui={UI_KEYS[0]: _save_temp(shown_before, "before"),
                                          UI_KEYS[1]: _save_temp(shown_after, "after")})
