"""Colorize + Merge on the model's device (ddcolor.devicepath). On the CPU (CI) the fallbacks are tested; with
``DDCOLOR_TEST_DEVICE=cuda`` (scripts/gpu_run.sh) the nodes run on the GPU against the CPU path."""

from __future__ import annotations

import importlib
import os

import comfy.model_management as mm
import pytest
import torch

# the same photos and Colorize call as the CPU node tests
from tests.nodes.test_colorize import SIZE, _photos
from tests.nodes.test_colorize import _run as _colorize

DEVICE = torch.device(os.environ.get("DDCOLOR_TEST_DEVICE", "cpu"))
cuda_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs DDCOLOR_TEST_DEVICE=cuda")
def _merge_module(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.merge")


def test_merge_falls_back_to_the_cpu_when_the_gpu_is_out_of_memory(pack, dd, monkeypatch, caplog):
    merge = _merge_module(pack)
    photos = _photos(2, 30, 40)
    ab = (torch.rand(2, 2, 16, 16) - 0.5) * 40
    original = dd.merge_lab
    calls = []

    def merge_lab(*args, device=None, **kwargs):
        calls.append(device)
        if device is not None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(dd, "merge_lab", merge_lab)
    out = merge.merge(photos, ab, "guided", 1.0, torch.device("cpu"))
    assert calls == [torch.device("cpu"), None]
    torch.testing.assert_close(out, original(photos, ab, upsample="guided"), atol=0, rtol=0)
    assert "out of memory" in caplog.text


def test_merge_does_not_swallow_other_errors(pack, dd, monkeypatch):
    merge = _merge_module(pack)

    def merge_lab(*args, device=None, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(dd, "merge_lab", merge_lab)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        merge.merge(_photos(1, 8, 8), torch.zeros(1, 2, 4, 4), "nearest", 1.0, torch.device("cpu"))


def test_full_res_steps_leave_opencv_only_for_gpus(pack):
    comfy_helpers = importlib.import_module(f"{pack.__name__}.nodes._comfy")
    assert comfy_helpers.full_res_device(torch.device("cpu")) is None
    assert comfy_helpers.full_res_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_nodes_on_the_models_device_match_the_cpu_path(nodes_pkg, dd, tiny_patcher):
    photos = _photos(3, 48, 72)
    ab, preview = _colorize(nodes_pkg, tiny_patcher, photos, batch_size=2)
    assert ab.device.type == "cpu" and ab.dtype == torch.float32
    assert preview.device.type == "cpu" and preview.shape == photos.shape
    (merged,) = nodes_pkg.DDColorMergeLab.execute(photos, ab, "guided", 1.0).result
    assert merged.device.type == "cpu" and merged.dtype == torch.float32
    reference = dd.colorize(_cpu_copy(tiny_patcher), photos, input_size=SIZE, upsample="guided", batch_size=2,
                            device_path=False)
    d = (merged - reference).abs() * 255
    assert float(d.mean()) < 0.35 and float(d.max()) < 3.0, (float(d.max()), float(d.mean()))


def _cpu_copy(patcher):
    import copy

    return copy.deepcopy(patcher.model).to("cpu", torch.float32)


@cuda_only
def test_model_runs_on_the_gpu_and_offload_returns_the_memory(nodes_pkg, tiny_patcher):
    accel = importlib.import_module(f"{nodes_pkg.__name__.rsplit('.', 1)[0]}.ddcolor.accel")
    photos = _photos(2, 64, 64)
    for _ in range(2):  # the second run replays a CUDA graph
        _colorize(nodes_pkg, tiny_patcher, photos, batch_size=2)
    assert next(tiny_patcher.model.parameters()).device.type == "cuda"
    assert len(accel.graph_cache(tiny_patcher.model)) == 1
    torch.cuda.synchronize()
    loaded = torch.cuda.memory_allocated()
    weights = sum(p.numel() * p.element_size() for p in tiny_patcher.model.parameters())
    _colorize(nodes_pkg, tiny_patcher, photos, batch_size=2, offload_after_run=True)
    assert next(tiny_patcher.model.parameters()).device.type == "cpu"
    assert len(accel.graph_cache(tiny_patcher.model)) == 0
    torch.cuda.synchronize()
    assert loaded - torch.cuda.memory_allocated() >= 0.95 * weights  # weights (and the graph's pool) went back


@cuda_only
def test_out_of_memory_on_the_device_path_halves_then_finishes(nodes_pkg, dd, tiny_patcher, monkeypatch):
    devicepath = importlib.import_module(f"{nodes_pkg.__name__.rsplit('.', 1)[0]}.ddcolor.devicepath")
    photos = _photos(4, 40, 40)
    expected, _ = _colorize(nodes_pkg, tiny_patcher, photos, batch_size=4)
    original = devicepath.network_input
    sizes = []

    def network_input(source, *args, **kwargs):
        sizes.append(source.shape[0])
        if source.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(source, *args, **kwargs)

    monkeypatch.setattr(devicepath, "network_input", network_input)
    ab, _ = _colorize(nodes_pkg, tiny_patcher, photos, batch_size=4)
    assert sizes[:3] == [4, 2, 1]
    torch.testing.assert_close(ab, expected, atol=1e-3, rtol=0)
    assert all(p.device.type == "cuda" for p in tiny_patcher.model.parameters())


@cuda_only
@pytest.mark.parametrize("bad", ["nan", "channels"])
def test_bad_input_on_the_gpu_errors_as_on_the_cpu_and_the_next_prompt_runs(nodes_pkg, dd, tiny_patcher, bad):
    photos = _photos(2, 40, 40)
    if bad == "nan":
        photos[1, 0, 0, 0] = float("nan")
    else:
        photos = torch.cat([photos, photos[..., :2]], dim=-1)
    with pytest.raises(dd.InputImageError) as on_gpu:
        _colorize(nodes_pkg, tiny_patcher, photos)
    with pytest.raises(dd.InputImageError) as on_cpu:
        dd.prepare_input(photos, SIZE)
    assert str(on_gpu.value) == str(on_cpu.value)
    assert all(p.device.type == "cuda" for p in tiny_patcher.model.parameters())
    ab, preview = _colorize(nodes_pkg, tiny_patcher, _photos(2, 40, 40))
    assert torch.isfinite(preview).all()
    mm.soft_empty_cache()
