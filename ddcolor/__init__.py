"""DDColor colorization in pure PyTorch: checkpoint-exact network, loading, and a batch pipeline.

No ComfyUI import anywhere in this package. See CONTRIBUTING.md for the API contract.
"""

from .arch import step_callback
from .config import DDColorConfig, detect_config
from .errors import CheckpointError, DDColorError, InputImageError, UnsupportedModelError
from .loading import load_model
from .pipeline import (
    RESIZE_MODES,
    UPSAMPLE_MODES,
    ModelInput,
    colorize,
    colorize_uint8,
    merge_lab,
    model_input_geometry,
    predict_ab,
    prepare_input,
)

__all__ = [
    "RESIZE_MODES",
    "UPSAMPLE_MODES",
    "CheckpointError",
    "DDColorConfig",
    "DDColorError",
    "InputImageError",
    "ModelInput",
    "UnsupportedModelError",
    "colorize",
    "colorize_uint8",
    "detect_config",
    "load_model",
    "merge_lab",
    "model_input_geometry",
    "predict_ab",
    "prepare_input",
    "step_callback",
]

try:  # the download helper needs huggingface_hub only when used
    from .hub import OFFICIAL_MODELS, download_official  # noqa: F401

    __all__ += ["OFFICIAL_MODELS", "download_official"]
except ImportError:  # hub.py absent in a trimmed install
    pass
