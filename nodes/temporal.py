"""DDColor Temporal Smooth (video): steadies predicted colour from frame to frame (the maths is ddcolor.temporal)."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from ..ddcolor.temporal import MAX_STRENGTH
from ._comfy import CATEGORY, DDColorAB, check_interrupted, progress_bar, schema
from ._validate import check_number, verdict

logger = logging.getLogger("ComfyUI-DDColor")


class DDColorTemporalSmooth(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DDColorTemporalSmooth",
            display_name="DDColor Temporal Smooth (video)",
            category=CATEGORY,
            search_aliases=["video", "flicker", "deflicker", "temporal", "film", "视频", "闪烁"],
            description=(
                "Removes colour flicker from a colorized video. DDColor colours every frame alone, so the same "
                "coat or wall changes colour slightly from frame to frame. This node follows the motion between "
                "frames (optical flow on the frames' brightness) and carries the colour of the previous frame "
                "along with it, blended with the new prediction. Where the motion does not explain the picture "
                "(something appears, moves in front, or the scene cuts) the frame keeps its own colour. Put it "
                "between DDColor Colorize (Lab) and DDColor Merge L + ab; the frames must be in order."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The video frames, in order: the same batch that went into "
                                                "DDColor Colorize (Lab)."),
                DDColorAB.Input("ab", tooltip="Colour from DDColor Colorize (Lab) for these frames."),
                io.Float.Input(
                    "strength",
                    default=0.75,
                    min=0.0,
                    max=MAX_STRENGTH,
                    step=0.05,
                    tooltip=(
                        "How much colour is carried over from the previous frames where the motion matches. "
                        "0 = off (every frame as predicted); 0.75 = steady colour that still follows real "
                        "changes within a few frames; 0.9 = steadiest, slower to follow."
                    ),
                ),
                io.Float.Input(
                    "scene_cut_sensitivity",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip=(
                        "How readily a frame counts as a new shot, which then starts with its own colour. "
                        "Raise it if colour leaks across cuts; lower it if a fast camera move is taken for a cut. "
                        "0 = never cut."
                    ),
                ),
            ],
            outputs=[
                DDColorAB.Output("ab_out", display_name="ab",  # ids must differ from inputs (ComfyUI 0.3.x)
                                 tooltip="The steadied colour, for DDColor Merge L + ab."),
                io.String.Output("report", display_name="report",
                                 tooltip="Frames, shots and where the scene cuts are (frame numbers from 0)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, strength=None, scene_cut_sensitivity=None) -> bool | str:
        return verdict(check_number("strength", strength, 0.0, MAX_STRENGTH),
                       check_number("scene_cut_sensitivity", scene_cut_sensitivity, 0.0, 1.0))

    @classmethod
    def execute(cls, image: torch.Tensor, ab: torch.Tensor, strength: float = 0.75,
                scene_cut_sensitivity: float = 0.5) -> io.NodeOutput:
        from ..ddcolor.temporal import smooth_ab

        frames = int(ab.shape[0]) if isinstance(ab, torch.Tensor) and ab.ndim == 4 else 0
        bar = progress_bar(max(frames, 1))

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done, total)
            check_interrupted()

        result = smooth_ab(image, ab, strength=float(strength), scene_cut_sensitivity=float(scene_cut_sensitivity),
                           device=mm.get_torch_device(), progress=progress)
        report = result.report() if strength > 0 else f"{frames} frame(s): strength 0, colour left as predicted."
        logger.info("DDColor Temporal Smooth: %s", report)
        return io.NodeOutput(result.ab, report, ui=ui.PreviewText(report))
