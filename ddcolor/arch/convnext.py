"""ConvNeXt encoder as used by DDColor (returns the four normalised stage outputs explicitly).

ConvNeXt: Liu et al., "A ConvNet for the 2020s", CVPR 2022. Parameter names follow the official DDColor
checkpoints (``encoder.arch.*``), so released weights load unchanged.

Layout: the main path keeps activations channels-last in memory (``torch.channels_last``), so the per-pixel
LayerNorm and the two pointwise Linear layers of every block work on contiguous NHWC rows without copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._ops import linear_act
from ._steps import step


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor (the official "channels_first" LayerNorm).

    Computed in one pass on the NHWC view; identical maths to the official two-pass form
    ``(x - mean) / sqrt(var + eps)`` with the biased variance.
    """

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W), channels_last memory
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear(C, 4C) -> GELU (erf) -> Linear(4C, C) -> layer scale, + residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) channels_last
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C), contiguous
        y = self.pwconv2(linear_act(self.norm(y), self.pwconv1.weight, self.pwconv1.bias, "gelu"))
        y = y * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """The four ConvNeXt stages; :meth:`forward` returns ``[f0, f1, f2, f3]`` (after ``norm0..norm3``).

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        in_chans: input channels (3).
    """

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], in_chans: int = 3) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        )
        for i in range(1, 4):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2)
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(dims[i]) for _ in range(depths[i])]) for i in range(4)
        )
        for i in range(4):
            self.add_module(f"norm{i}", LayerNorm2d(dims[i], eps=1e-6))
        # Final pooled LayerNorm of the classification backbone: present in every checkpoint, its output is
        # discarded by DDColor, so it is kept for strict loading and never computed.
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(4):
            x = self.downsample_layers[i](x)
            for block in self.stages[i]:
                x = block(x)
                step()
            features.append(getattr(self, f"norm{i}")(x))  # f_i: (B, C_i, S/2^(i+2), S/2^(i+2))
        return features


class ImageEncoder(nn.Module):
    """Holds the backbone under ``arch`` (the checkpoint key prefix ``encoder.arch.``)."""

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...]) -> None:
        super().__init__()
        self.arch = ConvNeXt(depths, dims)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.arch(x)
