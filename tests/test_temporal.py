"""Temporal smoothing (ddcolor.temporal) on a synthetic film clip with known motion, colour and jitter.

The clip (tests/temporal_clip.py): 48 frames, a pan and zoom over a NASA photo, a hard cut at frame 24 to a
second picture, sensor noise; the per-frame ab is the true colour plus a known low-frequency jitter.

The quality tests run with both optical flows: ``dis`` (OpenCV, what the CPU uses) and ``torch``
(ddcolor.flow, what a CUDA GPU uses; the same torch code runs here on the CPU).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from ddcolor import InputImageError, temporal
from ddcolor.temporal import MAX_STRENGTH, resolve_flow, smooth_ab
from tests.temporal_clip import PHOTOS, _grey, compensated_flicker, make_clip


@pytest.fixture(scope="module")
def clip():
    return make_clip()


FLOWS = ("dis", "torch")
DEVICE = torch.device(os.environ.get("DDCOLOR_TEST_DEVICE", "cpu"))
cuda_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs DDCOLOR_TEST_DEVICE=cuda (scripts/gpu_run.sh)")


@pytest.fixture(scope="module", params=FLOWS)
def flow(request):
    return request.param


@pytest.fixture(scope="module")
def smoothed(clip, flow):
    return smooth_ab(clip.frames, clip.ab_pred, flow=flow)  # the node's defaults: strength 0.75, sensitivity 0.5


def test_flicker_after_motion_compensation_drops_below_0_4x(clip, smoothed):
    per_frame = compensated_flicker(clip.ab_pred, clip)
    after = compensated_flicker(smoothed.ab, clip)
    assert per_frame > 3.0  # the jitter is really there (std 4 levels per frame)
    assert after <= 0.4 * per_frame, (after, per_frame)


def test_colour_stays_attached_to_the_moving_content(clip, smoothed):
    """The smoothed colour is closer to the true (moving) colour than the per-frame prediction, and much closer
    than blending without following the motion, which drags colour behind the content."""
    per_frame_error = (clip.ab_pred - clip.ab_true).abs().mean().item()
    error = (smoothed.ab - clip.ab_true).abs().mean().item()
    still = clip.ab_pred.clone()  # the same blend, but the previous frame is not moved along the motion
    for t in range(1, still.shape[0]):
        if t != clip.cut:
            still[t] = clip.ab_pred[t] + 0.75 * (still[t - 1] - clip.ab_pred[t])
    still_error = (still - clip.ab_true).abs().mean().item()
    assert error <= 0.7 * per_frame_error, (error, per_frame_error)
    assert error <= 0.5 * still_error, (error, still_error)


def test_the_cut_is_found_and_the_next_shot_starts_afresh(clip, smoothed):
    assert smoothed.cuts == (clip.cut,)
    first = smoothed.ab[clip.cut]
    assert (first - clip.ab_pred[clip.cut]).abs().max().item() <= 1.0
    assert "24" in smoothed.report() and "2 shots" in smoothed.report()


def test_strength_zero_is_bit_identical_to_per_frame(clip, flow):
    result = smooth_ab(clip.frames, clip.ab_pred, strength=0.0, flow=flow)
    assert torch.equal(result.ab, clip.ab_pred)
    assert result.ab.dtype == clip.ab_pred.dtype


def test_input_is_not_changed(clip):
    before = clip.ab_pred.clone()
    smooth_ab(clip.frames[:6], clip.ab_pred[:6])
    assert torch.equal(clip.ab_pred, before)


def test_backward_and_forward_average_mixes_later_frames_into_the_cut(clip, flow):
    """Why the node uses forward only: the two-way average also smooths, but the first frame after a cut is
    no longer its own per-frame colour."""
    both = smooth_ab(clip.frames, clip.ab_pred, direction="both", flow=flow)
    assert both.cuts == (clip.cut,)
    assert compensated_flicker(both.ab, clip) <= 0.4 * compensated_flicker(clip.ab_pred, clip)
    assert (both.ab[clip.cut] - clip.ab_pred[clip.cut]).abs().max().item() > 1.0


def test_lower_sensitivity_misses_no_cut_here_and_zero_never_cuts(clip, flow):
    assert smooth_ab(clip.frames, clip.ab_pred, scene_cut_sensitivity=0.3, flow=flow).cuts == (clip.cut,)
    assert smooth_ab(clip.frames, clip.ab_pred, scene_cut_sensitivity=0.0, flow=flow).cuts == ()


def test_auto_is_dis_on_the_cpu_and_torch_on_a_gpu(clip):
    """``flow="auto"`` (what the node passes) keeps the CPU output exactly as it was (DIS); CUDA gets the torch flow."""
    assert resolve_flow("auto", "cpu") == "dis" and resolve_flow("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_flow("dis", "cuda") == "dis" and resolve_flow("torch", "cpu") == "torch"
    auto = smooth_ab(clip.frames[:8], clip.ab_pred[:8])
    assert torch.equal(auto.ab, smooth_ab(clip.frames[:8], clip.ab_pred[:8], flow="dis").ab)
    assert not torch.equal(auto.ab, smooth_ab(clip.frames[:8], clip.ab_pred[:8], flow="torch").ab)
    with pytest.raises(ValueError, match="flow must be one of"):
        smooth_ab(clip.frames[:2], clip.ab_pred[:2], flow="farneback")


@cuda_only
def test_what_the_node_does_on_the_test_device(clip):
    """On a GPU the node (flow auto = the torch flow, on the GPU) meets the same targets, and gives what the same
    torch code gives on the CPU (up to float rounding)."""
    result = smooth_ab(clip.frames, clip.ab_pred, device=DEVICE)
    assert compensated_flicker(result.ab, clip) <= 0.4 * compensated_flicker(clip.ab_pred, clip)
    assert result.cuts == (clip.cut,)
    assert (result.ab[clip.cut] - clip.ab_pred[clip.cut]).abs().max().item() <= 1.0
    on_cpu = smooth_ab(clip.frames, clip.ab_pred, flow="torch")
    assert (result.ab - on_cpu.ab).abs().mean().item() <= 0.05, (result.ab - on_cpu.ab).abs().mean().item()


def test_torch_flow_out_of_gpu_memory_retries_one_pair_at_a_time(clip, monkeypatch):
    """A small GPU shared with the model: the batched flow runs out of memory, the smoother goes on pair by pair
    and gives the same result."""
    expected = smooth_ab(clip.frames[:20], clip.ab_pred[:20], flow="torch")
    real, batches = temporal.dense_flow, []

    def small_gpu(cur, prev):
        batches.append(cur.shape[0])
        if cur.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return real(cur, prev)

    monkeypatch.setattr(temporal, "dense_flow", small_gpu)
    result = smooth_ab(clip.frames[:20], clip.ab_pred[:20], flow="torch")
    assert torch.equal(result.ab, expected.ab) and result.cuts == expected.cuts
    assert batches[0] > 1 and set(batches[1:]) == {1}


def test_the_two_flows_agree_on_the_clip(clip):
    """The torch flow's result is close to DIS's: the same smoothing, not merely the same test scores. (Measured:
    they differ by 0.54 levels on average where the smoothing moves the colour by 2.9.)"""
    dis = smooth_ab(clip.frames, clip.ab_pred, flow="dis").ab
    ours = smooth_ab(clip.frames, clip.ab_pred, flow="torch").ab
    change = (dis - clip.ab_pred).abs().mean().item()
    assert (ours - dis).abs().mean().item() <= 0.3 * change, ((ours - dis).abs().mean().item(), change)


# ------------------------------------------------------------------------------------------------ bad input


def test_a_single_frame_is_returned_unchanged(clip):
    result = smooth_ab(clip.frames[:1], clip.ab_pred[:1])
    assert torch.equal(result.ab, clip.ab_pred[:1]) and result.cuts == ()


@pytest.mark.parametrize("flow", FLOWS)
def test_a_clip_of_only_cuts_keeps_every_frame_as_predicted(flow):
    astronaut, drawing = (_grey(p) for p in PHOTOS)
    shots = [astronaut[0:144, 0:192], drawing[0:144, 0:192], astronaut[300:444, 250:442],
             cv2.resize(drawing, (192, 144))[::-1], astronaut[150:294, 300:492][:, ::-1]]
    frames = torch.from_numpy(np.stack([np.repeat(s[..., None], 3, -1) for s in shots]).astype(np.float32))
    ab = torch.from_numpy(np.random.default_rng(3).normal(0, 20, size=(5, 2, 96, 128)).astype(np.float32))
    result = smooth_ab(frames, ab, flow=flow)
    assert result.cuts == (1, 2, 3, 4)
    assert torch.equal(result.ab, ab)
    assert "every one a new shot" in result.report()


@pytest.mark.parametrize("flow", FLOWS)
def test_frames_with_alpha_are_smoothed_like_rgb(clip, flow):
    rgba = torch.cat([clip.frames[:8], torch.rand(8, *clip.frames.shape[1:3], 1)], dim=-1)
    assert torch.equal(smooth_ab(rgba, clip.ab_pred[:8], flow=flow).ab,
                       smooth_ab(clip.frames[:8], clip.ab_pred[:8], flow=flow).ab)


def test_different_frame_counts_are_refused(clip):
    with pytest.raises(InputImageError, match=r"image has 10 frame\(s\) but ab has 9"):
        smooth_ab(clip.frames[:10], clip.ab_pred[:9])


def test_ab_of_another_picture_shape_is_refused(clip):
    wrong = torch.zeros(4, 2, 96, 40)  # tall ab for wide frames
    with pytest.raises(InputImageError, match="different picture shape"):
        smooth_ab(clip.frames[:4], wrong)


@pytest.mark.parametrize("flow", FLOWS)
def test_square_ab_fits_any_frame_shape(clip, flow):
    square = torch.nn.functional.interpolate(clip.ab_pred[:4], size=(64, 64), mode="bilinear")
    assert smooth_ab(clip.frames[:4], square, flow=flow).ab.shape == (4, 2, 64, 64)


@pytest.mark.parametrize(("flow", "ab_hw"), [("dis", (33, 45)), ("torch", (33, 45)), ("torch", (1, 1)),
                                             ("torch", (2, 3)), ("torch", (5, 7)), ("torch", (1, 40))])
def test_tiny_and_odd_ab_sizes_work(flow, ab_hw):
    """Odd, non-square and 1-2 pixel ab (the frames have the same shape), over more than one chunk of frames.
    (OpenCV's DIS needs 12 pixels on one side; the node's ab is at least 64.)"""
    h, w = ab_hw
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(20, h * 3, w * 3, 3, generator=g)
    ab = torch.randn(20, 2, h, w, generator=g) * 10
    result = smooth_ab(frames, ab, flow=flow)
    assert result.ab.shape == ab.shape and torch.isfinite(result.ab).all()


def test_nan_in_ab_names_the_frame(clip):
    ab = clip.ab_pred[:6].clone()
    ab[3, 1, 5, 5] = float("nan")
    with pytest.raises(InputImageError, match=r"ab\[3\] \(frame 3.*NaN.*fp32"):
        smooth_ab(clip.frames[:6], ab)


def test_widget_values_out_of_range_are_refused(clip):
    with pytest.raises(InputImageError, match="strength"):
        smooth_ab(clip.frames[:2], clip.ab_pred[:2], strength=MAX_STRENGTH + 0.01)
    with pytest.raises(InputImageError, match="scene_cut_sensitivity"):
        smooth_ab(clip.frames[:2], clip.ab_pred[:2], scene_cut_sensitivity=1.5)


def test_memory_stays_one_output_whatever_the_length(clip):
    """Frames are read one at a time: the result is one new ab tensor, the frames are never copied whole."""
    result = smooth_ab(clip.frames, clip.ab_pred)
    assert result.ab.shape == clip.ab_pred.shape and result.ab.dtype == torch.float32
    assert result.ab.data_ptr() != clip.ab_pred.data_ptr()
