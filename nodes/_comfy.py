"""Small adapters over ComfyUI APIs that differ between ComfyUI 0.3.75 and current releases.

Everything here is feature-detected, so the pack runs on both without version checks.
"""

from __future__ import annotations

import dataclasses
import logging

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

logger = logging.getLogger("ComfyUI-DDColor")

CATEGORY = "image/color/DDColor"

DDColorModel = io.Custom("DDCOLOR_MODEL")
"""A DDColor network wrapped in a ``comfy.model_patcher.ModelPatcher``."""
DDColorAB = io.Custom("DDCOLOR_AB")
"""Predicted Lab chroma: float32 CPU tensor (B, 2, h, w), cropped to the picture (no padding)."""

_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}


def schema(**kwargs) -> io.Schema:
    """``io.Schema`` that drops fields this ComfyUI does not know yet (e.g. ``search_aliases`` before 0.4)."""
    return io.Schema(**{k: v for k, v in kwargs.items() if k in _SCHEMA_FIELDS})


def is_oom(exc: BaseException) -> bool:
    """True if ``exc`` is an out-of-memory error (ComfyUI's own test when it has one)."""
    if hasattr(mm, "is_oom"):
        return bool(mm.is_oom(exc))
    oom = getattr(mm, "OOM_EXCEPTION", None)
    if isinstance(oom, type) and oom is not Exception and isinstance(exc, oom):
        return True
    torch_oom = getattr(__import__("torch"), "OutOfMemoryError", None)
    return torch_oom is not None and isinstance(exc, torch_oom)


def raise_non_oom(exc: BaseException) -> None:
    """Re-raise ``exc`` unless it is an out-of-memory error."""
    if hasattr(mm, "raise_non_oom"):
        mm.raise_non_oom(exc)
        return
    if not is_oom(exc):
        raise exc


def full_res_device(device: torch.device | None = None) -> torch.device | None:
    """Where the full-resolution steps (resize, grey input, preview, merge) run: the given (model's) device or
    ComfyUI's GPU, in torch (``ddcolor.devicepath``); None = on the CPU with OpenCV (the official-exact path)."""
    device = torch.device(device) if device is not None else mm.get_torch_device()
    return device if device.type == "cuda" else None


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (the queue's "x")."""
    mm.throw_exception_if_processing_interrupted()


def progress_bar(total: int) -> comfy.utils.ProgressBar:
    return comfy.utils.ProgressBar(total)


def unload(patcher) -> bool:
    """Hand ``patcher``'s VRAM back: unload it from ComfyUI's loaded-model list (weights go to offload device)."""
    unloaded = False
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is patcher and loaded.model_unload():
            mm.current_loaded_models.pop(i)
            unloaded = True
    if unloaded:
        mm.soft_empty_cache()
    return unloaded
