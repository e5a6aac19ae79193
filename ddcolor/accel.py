"""Running the network fast and exactly on a GPU: fp32 without TF32, channels_last, CUDA-graph replay.

* **fp32 means the official numbers.** cuDNN's default TF32 convolutions move ab by up to 0.04 from the
  official reference; :func:`exact_fp32` turns TF32 off for our forward only and restores the caller's flags.
* **channels_last** weights on CUDA (the convolutions then need no layout changes; the activations already are).
* **CUDA graphs**: the second time a (batch, shape, dtype) is seen, the forward is captured once and then
  replayed (one launch instead of hundreds). Any capture error falls back to eager for that key. The graphs
  are dropped whenever the model's parameters move (``.to()``, offload, partial unload): replay checks the
  parameter storages it was captured with. A graph also keeps alive the cached tensors its forward read (the
  position encodings, :func:`ddcolor.arch.decoder.keep_cached_tensors`): it reads them by address.

On the CPU all of this is a no-op: :func:`forward` is ``model(x)`` under ``inference_mode``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict

import torch
from torch import Tensor

from .arch._steps import step_callback
from .arch.decoder import keep_cached_tensors

logger = logging.getLogger("ddcolor")

MAX_GRAPHS = 3
"""Captured graphs kept per model (each holds its activation memory); least recently used dropped first."""

AUTOTUNE_CAPTURE = False
"""True: cuDNN benchmarks its convolution algorithms during a capture's warm-up (fp16/bf16 only; the caller's
``cudnn.benchmark`` is restored). Only captured shapes pay the tuning, once. Off until measured on a GPU:
``benchmarks/bench_gpu.py`` prints the graph time with and without it."""

_lock = threading.Lock()


@contextlib.contextmanager
def exact_fp32(device: torch.device, dtype: torch.dtype):
    """TF32 off (cuDNN convolutions and CUDA matmuls) while the body runs, for fp32 on CUDA; flags restored.

    Uses the ``fp32_precision`` API where this torch has it (2.9+), else the legacy ``allow_tf32`` flags.
    """
    if torch.device(device).type != "cuda" or dtype != torch.float32:
        yield
        return
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv is not None:
        saved = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _slots(model: torch.nn.Module) -> list[tuple[dict, str]]:
    """Where each parameter and buffer lives: (the owning module's ``_parameters``/``_buffers`` dict, name)."""
    slots = model.__dict__.get("_ddcolor_slots")
    if slots is None:
        slots = [(store, name) for module in model.modules() for store in (module._parameters, module._buffers)
                 for name in store]
        model.__dict__["_ddcolor_slots"] = slots
    return slots


def _fingerprint(model: torch.nn.Module) -> tuple:
    """The storage address of every parameter and buffer: changes when any of them is moved or replaced.

    Read through :func:`_slots` (a flat list made once) rather than ``model.parameters()``: on a GPU this
    check runs before every replay, and walking the module tree took ~0.6 ms per call (tiny, 424 tensors).
    """
    return tuple(0 if (t := store.get(name)) is None else t.data_ptr() for store, name in _slots(model))


class _Graph:
    def __init__(self, graph, static_in: Tensor, static_out: Tensor, fingerprint: tuple,
                 kept: list[Tensor]) -> None:
        self.graph, self.static_in, self.static_out, self.fingerprint = graph, static_in, static_out, fingerprint
        self.kept = kept  # cached tensors (position encodings) the graph reads: alive as long as the graph


class GraphCache:
    """Per-model cache: key -> captured graph, or ``None`` (capture failed: stay eager), plus seen-counts."""

    def __init__(self) -> None:
        self.graphs: OrderedDict[tuple, _Graph | None] = OrderedDict()
        self.seen: dict[tuple, int] = {}
        self.fingerprint: tuple | None = None

    def clear(self) -> None:
        self.graphs.clear()
        self.seen.clear()
        self.fingerprint = None

    def __len__(self) -> int:
        return sum(g is not None for g in self.graphs.values())


def graph_cache(model: torch.nn.Module) -> GraphCache:
    cache = model.__dict__.get("_ddcolor_graphs")
    if cache is None:
        cache = GraphCache()
        model.__dict__["_ddcolor_graphs"] = cache
    return cache


def release(model: torch.nn.Module) -> None:
    """Drop the model's captured graphs (their memory goes back to the caching allocator)."""
    cache = model.__dict__.get("_ddcolor_graphs")
    if cache is not None:
        cache.clear()


def _use_channels_last(model: torch.nn.Module) -> None:
    """Convolution weights in channels_last (once; only on CUDA)."""
    if model.__dict__.get("_ddcolor_channels_last") == _fingerprint_device(model):
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and not module.weight.is_contiguous(memory_format=torch.channels_last):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    model.__dict__["_ddcolor_channels_last"] = _fingerprint_device(model)


def _fingerprint_device(model: torch.nn.Module) -> tuple:
    param = next(model.parameters())
    return (param.device, param.dtype, param.data_ptr())


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    if not on:
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _capture(model: torch.nn.Module, x: Tensor, fingerprint: tuple) -> _Graph:
    # no step callback during the warm-up and capture: a Cancel raised there would read as a capture failure
    # and leave this shape eager for good; the caller checks for Cancel before and after the forward
    autotune = AUTOTUNE_CAPTURE and x.dtype in (torch.float16, torch.bfloat16)
    with torch.cuda.device(x.device), step_callback(None), _cudnn_benchmark(autotune):
        static_in = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: cuDNN autotuning, lazy buffers (position encodings)
                model(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (ComfyUI's previews, other nodes) are not disturbed
        with keep_cached_tensors() as kept, torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = model(static_in)
    return _Graph(graph, static_in, static_out, fingerprint, kept)


def forward(model: torch.nn.Module, x: Tensor, *, graphs: bool | None = None,
            channels_last: bool | None = None) -> Tensor:
    """``model(x)`` (x already on the model's device and dtype), with the GPU accelerations described above.

    ``graphs`` / ``channels_last``: None = on for CUDA. On other devices they do nothing. The result is a new
    tensor the caller owns (a replayed graph's output is cloned).
    """
    device = x.device
    cuda = device.type == "cuda"
    if cuda and channels_last is not False:
        with torch.no_grad():  # not inference_mode: the weights must stay ordinary tensors for their owner
            _use_channels_last(model)
    with torch.inference_mode(), exact_fp32(device, x.dtype):
        if not cuda:
            return model(x)
        if channels_last is not False:
            x = x.contiguous(memory_format=torch.channels_last)
        if graphs is False:
            return model(x)
        return _forward_graph(model, x)


def _forward_graph(model: torch.nn.Module, x: Tensor) -> Tensor:
    cache = graph_cache(model)
    key = (tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last),
           torch.backends.cudnn.conv.fp32_precision if hasattr(torch.backends.cudnn, "conv") else
           torch.backends.cudnn.allow_tf32)
    with _lock:
        fingerprint = _fingerprint(model)
        if cache.fingerprint != fingerprint:  # parameters moved or were replaced: old graphs are invalid
            cache.clear()
            cache.fingerprint = fingerprint
        entry = cache.graphs.get(key, False)
        if entry is False:
            if len(cache.seen) > 64:  # many one-off shapes: forget them rather than grow
                cache.seen.clear()
            cache.seen[key] = cache.seen.get(key, 0) + 1
            if cache.seen[key] < 2:  # only repeated shapes are worth a capture
                return model(x)
            try:
                entry = _capture(model, x, fingerprint)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
                logger.info("DDColor: CUDA graph capture failed for %s (%s); running eagerly.", key[:2], exc)
                entry = None
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize(x.device)
            cache.graphs[key] = entry
            while len(cache.graphs) > MAX_GRAPHS:
                cache.graphs.popitem(last=False)
        else:
            cache.graphs.move_to_end(key)
        if entry is None:
            return model(x)
        entry.static_in.copy_(x)
        entry.graph.replay()
        return entry.static_out.clone()
