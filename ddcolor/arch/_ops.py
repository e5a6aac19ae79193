"""Fused linear + activation: one oneDNN call on the CPU in float32, plain PyTorch everywhere else.

``linear(x) -> activation`` as two PyTorch ops writes the (often large) output twice: GEMM with the bias
copied in first, then the activation pass. oneDNN's ``_linear_pointwise`` (PyTorch's CPU build, the op that
``torch.compile`` uses) applies bias and activation inside the GEMM. It is a private op, so it is looked up
once and used only where it exists; results are the same maths (exact erf GELU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_ACTIVATIONS = {"relu": (F.relu, "relu", ""), "gelu": (F.gelu, "gelu", "none")}


def _find_fused_linear():
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN ops
        return None


_FUSED_LINEAR = _find_fused_linear()


def linear_act(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    """``activation(F.linear(x, weight, bias))`` for ``activation`` in {"relu", "gelu"} (exact erf GELU)."""
    reference, attr, algorithm = _ACTIVATIONS[activation]
    if (_FUSED_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not (torch.is_grad_enabled() and weight.requires_grad)):
        return _FUSED_LINEAR(x, weight, bias, attr, [], algorithm)
    return reference(F.linear(x, weight, bias))
