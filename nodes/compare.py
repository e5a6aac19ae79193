"""DDColor Compare: before/after picture (side by side, or split at a position)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..ddcolor.compare import MODES, compare_images
from ._comfy import CATEGORY, schema
from ._validate import check_choice, check_number, verdict


class DDColorCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DDColorCompare",
            display_name="DDColor Compare",
            category=CATEGORY,
            search_aliases=["before after", "compare", "split view"],
            description=(
                "Makes one picture to judge a colorization: the original and the result side by side, or split "
                "at a position (a white line marks the split). before is resized to after's size if needed."
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
        return io.NodeOutput(compare_images(before, after, mode=mode, split_position=float(split_position)))
