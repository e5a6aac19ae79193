"""DDColor network modules (pure PyTorch, no ComfyUI)."""

from ._steps import step_callback
from .convnext import ConvNeXt
from .ddcolor import DDColor, spectral_norm_layers
from .decoder import MultiScaleColorDecoder

__all__ = ["ConvNeXt", "DDColor", "MultiScaleColorDecoder", "spectral_norm_layers", "step_callback"]
