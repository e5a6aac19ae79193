"""The DDColor network.

DDColor: Kang et al., "DDColor: Towards Photo-Realistic Image Colorization via Dual Decoders", ICCV 2023.
Upstream: https://github.com/piddnad/DDColor (Apache-2.0), architecture as of commit 2adb63f; this is an
independent implementation written from the specification in the pack's tests/docs. The released weights
(Hugging Face ``piddnad/DDColor-models``) are Apache-2.0 as well.

Input: (B, 3, H, W) RGB in 0..1 (the pipeline feeds a neutral grey image), H and W multiples of 32.
Output: (B, 2, H, W) Lab a*, b* in OpenCV float units (about -128..127; not clamped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import DDColorConfig
from ._ops import linear_act
from ._steps import step
from .convnext import ImageEncoder
from .decoder import DuelDecoder, blur_2x2

# Bytes of last_shuf activations evaluated at once (bounds memory for large inputs and keeps them in cache).
_FUSED_CHUNK_BYTES = 48 << 20


class DDColor(nn.Module):
    """Encoder + dual decoder + refine projection, parameter names as in the official checkpoints.

    The final stage is evaluated in a re-associated but mathematically identical order. Upstream computes
    the 100 query maps ``Q = E . blur(PS4(relu(conv(out2))))`` (100 x 256 x H x W multiply-adds) and then the
    1x1 refine conv over ``cat[Q, x]``. Because the refine conv, the colour-embedding product, PixelShuffle and
    the 2x2 blur are all linear, ``W_q . Q = blur(PS4((W_q . E) . relu(conv(out2))))``: the 2 x 256 matrix
    ``W_q . E`` is applied to the S/4 activations before they are shuffled, and neither ``Q`` nor the 256-channel
    full-resolution map is ever built.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, config: DDColorConfig | None = None) -> None:
        super().__init__()
        config = config or DDColorConfig()
        self.config = config
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.encoder = ImageEncoder(config.depths, config.dims)
        self.decoder = DuelDecoder(config.dims, config.nf, config.num_queries, config.hidden_dim, config.num_heads,
                                   config.dim_feedforward, config.dec_layers, config.num_scales)
        refine = nn.Conv2d(config.num_queries + 3, config.num_output_channels, 1, bias=True)
        self.refine_net = nn.Sequential(nn.Sequential(refine))

    def __getstate__(self):
        # copies (copy.deepcopy, pickle) never take the CUDA graphs along: they belong to this model's storages
        state = self.__dict__.copy()
        state.pop("_ddcolor_graphs", None)
        state.pop("_ddcolor_channels_last", None)
        state.pop("_ddcolor_slots", None)
        return state

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half() / offload: captured CUDA graphs (ddcolor.accel) point at the old storages
        self.__dict__.pop("_ddcolor_graphs", None)
        self.__dict__.pop("_ddcolor_channels_last", None)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std  # (B, 3, S, S); the refine conv sees this normalised image too
        maps, embed = self.decoder(self.encoder(x))  # maps[2]: (B, nf/2, S/4, S/4); embed: (B, Q, 256)
        refine = self.refine_net[0][0]
        weight = refine.weight.flatten(1)  # (O, Q + 3)
        q = self.config.num_queries
        mix = torch.matmul(weight[:, :q], embed)  # (O, Q) @ (B, Q, 256) -> (B, O, 256)
        ab = self._fused_last_shuffle(maps[2], mix)  # (B, O, S, S)
        return ab + F.conv2d(x, weight[:, q:, None, None], refine.bias)

    def _fused_last_shuffle(self, feat: Tensor, mix: Tensor) -> Tensor:
        """``blur(PS4(mix . relu(conv1x1(feat))))`` evaluated in row chunks. feat: (B, C, h, w) -> (B, O, 4h, 4w)."""
        conv = self.decoder.last_shuf.conv[0]
        hidden = mix.shape[-1]
        b, c, h, w = feat.shape
        out_ch = mix.shape[1]
        # Reorder conv outputs from channel*16 + subpixel to subpixel*hidden + channel, so each pixel's
        # activations form a contiguous (16, hidden) block that one matmul contracts with mix.
        weight = conv.weight.view(hidden, 16, c).transpose(0, 1).reshape(16 * hidden, c)
        bias = conv.bias.view(hidden, 16).t().reshape(-1)
        x = feat.permute(0, 2, 3, 1)  # (B, h, w, C); contiguous for channels_last input
        mix_t = mix.transpose(1, 2)  # (B, hidden, O)
        out = feat.new_empty(b, out_ch, h * 4, w * 4)
        rows = max(1, _FUSED_CHUNK_BYTES // max(1, b * w * 16 * hidden * feat.element_size()))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            y = linear_act(x[:, r0:r1], weight, bias, "relu")  # (B, r, w, 16 * hidden)
            z = torch.matmul(y.view(b, -1, hidden), mix_t)  # (B, r * w * 16, O)
            z = z.view(b, r1 - r0, w, 4, 4, out_ch).permute(0, 5, 1, 3, 2, 4)  # (B, O, r, i, w, j)
            out[:, :, r0 * 4 : r1 * 4] = z.reshape(b, out_ch, (r1 - r0) * 4, w * 4)
            step()
        return blur_2x2(out)


def spectral_norm_layers(model: DDColor) -> list[str]:
    """Names of the convolutions that are spectral-normalised in the official checkpoints (8 of them)."""
    names = []
    for i in range(len(model.decoder.layers)):
        names += [f"decoder.layers.{i}.shuf.conv.0", f"decoder.layers.{i}.conv.0"]
    return names + ["decoder.last_shuf.conv.0", "refine_net.0.0"]
