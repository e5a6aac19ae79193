"""DDColor Temporal Smooth (video) through the real node, with ComfyUI's own modules."""

from __future__ import annotations

import pytest
import torch

from tests.temporal_clip import compensated_flicker, make_clip


@pytest.fixture(scope="module")
def clip():
    return make_clip(frames=16, cut=10)


def test_the_node_steadies_the_colour_and_reports_the_cut(nodes_pkg, clip, progress_events):
    out = nodes_pkg.DDColorTemporalSmooth.execute(clip.frames, clip.ab_pred, 0.75, 0.5)
    ab, report = out.result
    assert ab.shape == clip.ab_pred.shape and ab.dtype == torch.float32 and ab.device.type == "cpu"
    assert compensated_flicker(ab, clip) <= 0.4 * compensated_flicker(clip.ab_pred, clip)
    assert "scene cuts before frame(s) 10" in report
    assert out.ui is not None
    assert progress_events and progress_events[-1] == (16, 16)


def test_strength_zero_passes_the_colour_through(nodes_pkg, clip):
    ab, report = nodes_pkg.DDColorTemporalSmooth.execute(clip.frames, clip.ab_pred, 0.0, 0.5).result
    assert torch.equal(ab, clip.ab_pred)
    assert "strength 0" in report


def test_then_merge_applies_as_for_a_photo(nodes_pkg, clip):
    ab, _ = nodes_pkg.DDColorTemporalSmooth.execute(clip.frames, clip.ab_pred, 0.75, 0.5).result
    (frames,) = nodes_pkg.DDColorMergeLab.execute(clip.frames, ab, "guided", 0.8).result
    assert frames.shape == clip.frames.shape


def test_cancel_stops_between_frames(nodes_pkg, clip, interrupt_flag):
    import comfy.model_management as mm

    interrupt_flag.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        nodes_pkg.DDColorTemporalSmooth.execute(clip.frames, clip.ab_pred, 0.75, 0.5)


def test_wrong_inputs_name_the_input(nodes_pkg, dd, clip):
    with pytest.raises(dd.InputImageError, match="image has 16 frame"):
        nodes_pkg.DDColorTemporalSmooth.execute(clip.frames, clip.ab_pred[:15], 0.75, 0.5)
    with pytest.raises(dd.InputImageError, match="ab: expected colour from DDColor Colorize"):
        nodes_pkg.DDColorTemporalSmooth.execute(clip.frames, clip.frames, 0.75, 0.5)
