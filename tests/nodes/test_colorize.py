"""DDColor Colorize (Lab) + Merge L + ab through the real nodes, against ``ddcolor.colorize``."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.model_patcher
import pytest
import torch

SIZE = 64  # small network input keeps the CPU tests fast; the code path is the same as 512


def _photos(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    grey = torch.rand(batch, height, width, 1, generator=g)
    return (grey + 0.05 * torch.rand(batch, height, width, 3, generator=g)).clamp(0, 1)


def _run(nodes_pkg, patcher, image, **kw):
    args = {"input_size": SIZE, "keep_aspect": False, "batch_size": 4, "offload_after_run": False} | kw
    return nodes_pkg.DDColorColorize.execute(patcher, image, **args).result


@pytest.mark.parametrize(("keep_aspect", "upsample", "chroma"), [(False, "bilinear", 1.0), (True, "guided", 1.5),
                                                                   (False, "nearest", 0.5)])
def test_colorize_then_merge_equals_ddcolor_colorize(nodes_pkg, dd, tiny_patcher, keep_aspect, upsample, chroma):
    photos = _photos(3, 40, 56)
    ab, preview = _run(nodes_pkg, tiny_patcher, photos, keep_aspect=keep_aspect, batch_size=2)
    assert ab.shape[:2] == (3, 2) and ab.dtype == torch.float32 and ab.device.type == "cpu"
    (merged,) = nodes_pkg.DDColorMergeLab.execute(photos, ab, upsample, chroma).result
    mode = "keep_aspect" if keep_aspect else "square"
    reference = dd.colorize(tiny_patcher.model, photos, input_size=SIZE, resize_mode=mode, upsample=upsample,
                            chroma=chroma, batch_size=2)
    assert merged.shape == photos.shape
    torch.testing.assert_close(merged, reference, atol=1e-6, rtol=0)
    preview_ref = dd.colorize(tiny_patcher.model, photos, input_size=SIZE, resize_mode=mode, upsample="bilinear",
                              chroma=1.0, batch_size=2)
    torch.testing.assert_close(preview, preview_ref, atol=1e-6, rtol=0)
    assert (merged - photos).abs().max() > 0.01  # colour really changed


def test_keep_aspect_changes_the_network_input(nodes_pkg, tiny_patcher):
    photos = _photos(1, 40, 120)
    ab_square, _ = _run(nodes_pkg, tiny_patcher, photos)
    ab_aspect, _ = _run(nodes_pkg, tiny_patcher, photos, keep_aspect=True)
    assert ab_square.shape == (1, 2, SIZE, SIZE)
    assert ab_aspect.shape == (1, 2, round(40 * SIZE / 120), SIZE)


def test_mixed_sizes_one_call_per_list_item(nodes_pkg, dd, tiny_patcher):
    # ComfyUI runs the node once per item of an image list; each result matches the library's list mode
    photos = [_photos(1, 48, 32, seed=1), _photos(2, 30, 70, seed=2)]
    merged = []
    for item in photos:
        ab, _ = _run(nodes_pkg, tiny_patcher, item)
        merged.append(nodes_pkg.DDColorMergeLab.execute(item, ab, "bilinear", 1.0).result[0])
    reference = dd.colorize(tiny_patcher.model, photos, input_size=SIZE, upsample="bilinear")
    for got, want, item in zip(merged, reference, photos, strict=True):
        assert got.shape == item.shape
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_progress_one_step_per_image(nodes_pkg, tiny_patcher, progress_events):
    _run(nodes_pkg, tiny_patcher, _photos(3, 32, 32), batch_size=1)
    assert progress_events == [(1, 3), (2, 3), (3, 3)]


def _counting_predict(dd, monkeypatch, before=None):
    real = dd.predict_ab
    calls = []

    def predict(model, model_input):
        calls.append(model_input.x.shape[0])
        if before is not None:
            before(len(calls), model_input)
        return real(model, model_input)

    monkeypatch.setattr(dd, "predict_ab", predict)
    return calls


def test_cancel_stops_between_images(nodes_pkg, dd, tiny_patcher, monkeypatch, interrupt_flag):
    def press_cancel_during_first(n, _):
        if n == 1:
            interrupt_flag.interrupt_current_processing(True)

    calls = _counting_predict(dd, monkeypatch, press_cancel_during_first)
    with pytest.raises(mm.InterruptProcessingException):
        _run(nodes_pkg, tiny_patcher, _photos(3, 32, 32), batch_size=1)
    assert calls == [1]  # the first image finished, the other two never started
    assert not mm.processing_interrupted()  # the flag is consumed, the next prompt runs


def test_out_of_memory_halves_the_chunk(nodes_pkg, dd, tiny_patcher, monkeypatch, caplog):
    photos = _photos(4, 32, 32)

    def oom_on_first(n, _):
        if n == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    calls = _counting_predict(dd, monkeypatch, oom_on_first)
    with caplog.at_level(logging.WARNING, logger="ComfyUI-DDColor"):
        ab, preview = _run(nodes_pkg, tiny_patcher, photos, batch_size=4)
    assert calls == [4, 2, 2]
    assert "retrying with 2 image(s) per step" in caplog.text
    reference = dd.colorize(tiny_patcher.model, photos, input_size=SIZE, upsample="bilinear", batch_size=4)
    torch.testing.assert_close(preview, reference, atol=1e-6, rtol=0)


def test_cpu_allocator_failure_also_halves_the_chunk(nodes_pkg, dd, tiny_patcher, monkeypatch):
    def ram_full_on_first(n, _):
        if n == 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 17179869184 bytes.")

    calls = _counting_predict(dd, monkeypatch, ram_full_on_first)
    ab, _ = _run(nodes_pkg, tiny_patcher, _photos(2, 32, 32), batch_size=2)
    assert calls == [2, 1, 1] and ab.shape[0] == 2


def test_out_of_memory_at_one_image_finishes_on_the_cpu(nodes_pkg, dd, tiny_patcher, monkeypatch, caplog):
    # A patcher that claims a GPU (this machine has none): loading is skipped, the network still runs here.
    gpu_patcher = comfy.model_patcher.ModelPatcher(tiny_patcher.model, load_device=torch.device("cuda", 0),
                                                   offload_device=torch.device("cpu"))
    loads = []
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kw: loads.append((models, kw)))
    photos = _photos(3, 32, 32)

    def oom_until_cpu(n, _):
        if n <= 2:  # chunk 3 fails, chunk 1 fails (on the "GPU"), then the CPU retry succeeds
            raise torch.OutOfMemoryError("CUDA out of memory")

    calls = _counting_predict(dd, monkeypatch, oom_until_cpu)
    with caplog.at_level(logging.WARNING, logger="ComfyUI-DDColor"):
        ab, preview = _run(nodes_pkg, gpu_patcher, photos, batch_size=4)
    assert calls == [3, 1, 1, 1, 1]
    assert "finishing on the CPU" in caplog.text
    assert loads and loads[0][0] == [gpu_patcher] and loads[0][1]["force_full_load"] is True
    reference = dd.colorize(tiny_patcher.model, photos, input_size=SIZE, upsample="bilinear")
    torch.testing.assert_close(preview, reference, atol=1e-6, rtol=0)


def test_out_of_memory_on_the_cpu_is_a_clear_error(nodes_pkg, dd, tiny_patcher, monkeypatch):
    def always_oom(n, _):
        raise torch.OutOfMemoryError("out of memory")

    _counting_predict(dd, monkeypatch, always_oom)
    with pytest.raises(dd.errors.DDColorError, match="Lower input_size"):
        _run(nodes_pkg, tiny_patcher, _photos(2, 32, 32), batch_size=2)


def test_other_errors_are_not_swallowed(nodes_pkg, dd, tiny_patcher, monkeypatch):
    def broken(n, _):
        raise RuntimeError("shape mismatch in layer 3")

    calls = _counting_predict(dd, monkeypatch, broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _run(nodes_pkg, tiny_patcher, _photos(4, 32, 32), batch_size=4)
    assert calls == [4]  # no retries for a non-memory error


def test_model_is_loaded_by_comfy_and_offloaded_on_request(nodes_pkg, tiny_patcher):
    _run(nodes_pkg, tiny_patcher, _photos(1, 32, 32))
    assert any(lm.model is tiny_patcher for lm in mm.current_loaded_models)
    _run(nodes_pkg, tiny_patcher, _photos(1, 32, 32), offload_after_run=True)
    assert not any(lm.model is tiny_patcher for lm in mm.current_loaded_models)


def test_bad_widget_values_are_rejected(nodes_pkg, dd, tiny_patcher):
    node = nodes_pkg.DDColorColorize
    assert "multiple of 32" in node.validate_inputs(input_size=500)
    assert "outside 64..2048" in node.validate_inputs(input_size=32)
    assert node.validate_inputs(input_size=512) is True
    assert node.validate_inputs() is True  # input_size linked from Resize by Preset: checked when it runs
    with pytest.raises(dd.errors.DDColorError, match="multiple of 32"):
        _run(nodes_pkg, tiny_patcher, _photos(1, 32, 32), input_size=100)
    with pytest.raises(dd.errors.DDColorError, match="from 1 to 64"):
        _run(nodes_pkg, tiny_patcher, _photos(1, 32, 32), batch_size=0)


def test_merge_batch_mismatch_is_a_clear_error(nodes_pkg, dd, tiny_patcher):
    ab, _ = _run(nodes_pkg, tiny_patcher, _photos(2, 32, 32))
    with pytest.raises(dd.errors.InputImageError, match="image has 3 picture.*ab has 2"):
        nodes_pkg.DDColorMergeLab.execute(_photos(3, 32, 32), ab, "bilinear", 1.0)


def test_cancel_takes_effect_inside_a_forward(nodes_pkg, tiny_patcher, interrupt_flag):
    """Cancel pressed while the network is in its first encoder block stops it there, not after the forward."""
    net = tiny_patcher.model
    decoder_calls = []

    def press_cancel(*_):
        interrupt_flag.interrupt_current_processing(True)

    hooks = [net.encoder.arch.stages[0][0].register_forward_hook(press_cancel),
             net.decoder.register_forward_pre_hook(lambda *_: decoder_calls.append(1))]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _run(nodes_pkg, tiny_patcher, _photos(1, 32, 32), input_size=64, batch_size=1)
    finally:
        for hook in hooks:
            hook.remove()
    assert decoder_calls == [], "the forward ran on after Cancel"
    assert not mm.processing_interrupted()
    assert _run(nodes_pkg, tiny_patcher, _photos(1, 32, 32), input_size=64)[0].shape == (1, 2, 64, 64)


@pytest.mark.parametrize(("input_size", "batch_size", "chunks"), [
    (1024, 16, [1] * 16),  # the hostile tester's case: Cancel took 115 s with 16 images per forward
    (512, 16, [4] * 4),
    (512, 2, [2] * 8),  # a smaller batch_size is kept
    (256, 16, [16]),
])
def test_cpu_forward_is_capped_so_cancel_stays_quick(nodes_pkg, dd, tiny_patcher, monkeypatch, input_size,
                                                       batch_size, chunks):
    calls = []

    def fake_predict(model, model_input):  # the chunking is under test, not the network
        calls.append(model_input.x.shape[0])
        h, w = model_input.content_hw
        return torch.zeros(model_input.x.shape[0], 2, h, w)

    monkeypatch.setattr(dd, "predict_ab", fake_predict)
    ab, _ = _run(nodes_pkg, tiny_patcher, _photos(16, 24, 24), input_size=input_size, batch_size=batch_size)
    assert calls == chunks
    assert ab.shape[0] == 16
