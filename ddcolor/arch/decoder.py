"""DDColor's pixel decoder (UNet blocks with PixelShuffle) and multi-scale colour decoder (learned queries).

Parameter names follow the official checkpoints (``decoder.*``). Spectral-normalised convolutions appear
here as plain ``nn.Conv2d``: the loader folds ``weight_orig / sigma`` into ``weight`` (eval-mode maths,
SPEC §4), see :mod:`ddcolor.loading`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._ops import linear_act
from ._steps import step


def blur_2x2(x: Tensor) -> Tensor:
    """Replicate-pad one row on top and one column on the left, then a 2x2 mean with stride 1.

    ``y[h, w] = (x[h-1, w-1] + x[h-1, w] + x[h, w-1] + x[h, w]) / 4`` with index -1 clamped to 0; same size.
    Equals the official ``AvgPool2d(2, stride=1)(ReplicationPad2d((1, 0, 1, 0))(x))``, done as two shifted adds.
    """
    row = x + torch.cat([x[..., :, :1], x[..., :, :-1]], dim=-1)
    return (row + torch.cat([row[..., :1, :], row[..., :-1, :]], dim=-2)) * 0.25


class _ConvBN(nn.Sequential):
    """``conv.0`` = 1x1 conv (spectral-normed upstream), ``conv.1`` = BatchNorm (the PixelShuffle_ICNR conv)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class _PixelShuffleUp(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _ConvBN(cin, cout * 4)

    def forward(self, x: Tensor) -> Tensor:  # (B, cin, H, W) -> (B, cout, 2H, 2W)
        return blur_2x2(F.pixel_shuffle(F.relu(self.conv(x)), 2))


class UnetBlockWide(nn.Module):
    """Upsample ``x`` by 2 and fuse the encoder skip: ``BN(ReLU(conv3x3(ReLU(cat[up(x), BN(skip)]))))``."""

    def __init__(self, up_in: int, skip_in: int, out: int) -> None:
        super().__init__()
        self.shuf = _PixelShuffleUp(up_in, out)
        self.bn = nn.BatchNorm2d(skip_in)
        self.conv = nn.Sequential(
            nn.Conv2d(out + skip_in, out, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(out)
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.shuf(x)
        if up.shape[-2:] != skip.shape[-2:]:  # only for input sides that are not multiples of 32
            up = F.interpolate(up, size=skip.shape[-2:], mode="nearest")
        # up is already >= 0 (a blur of a ReLU output), so the ReLU of the concatenation only acts on the skip
        return self.conv(torch.cat([up, F.relu(self.bn(skip))], dim=1))


class _LastShuffle(nn.Module):
    """``last_shuf``: 1x1 conv (with bias) -> ReLU -> PixelShuffle(4) -> blur. Only its weights are used
    directly; :class:`~ddcolor.arch.DDColor` evaluates it fused with the final projection."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout * 16, 1, bias=True))


_KEPT: ContextVar[list[Tensor] | None] = ContextVar("ddcolor_kept_tensors", default=None)


@contextmanager
def keep_cached_tensors() -> Iterator[list[Tensor]]:
    """Collect the tensors the forward takes from module-level caches while the block runs.

    A captured CUDA graph reads those tensors' memory at every replay but holds no reference to them; once the
    cache evicts one (another input size came along), its memory is reused and the replay would read garbage.
    Whoever captures a graph keeps the yielded list as long as the graph.
    """
    kept: list[Tensor] = []
    token = _KEPT.set(kept)
    try:
        yield kept
    finally:
        _KEPT.reset(token)


def position_encoding(height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """DETR sine position encoding, normalised to 2*pi: (H*W, dim) tokens in row-major order.

    Computed in float32 (as upstream) and then cast, so fp16/bf16 models stay in their own dtype. Depends
    only on the shape, so the last few are cached (read-only; callers must not modify the result); see
    :func:`keep_cached_tensors`.
    """
    pos = _position_encoding(height, width, dim, device, dtype)
    kept = _KEPT.get()
    if kept is not None:
        kept.append(pos)
    return pos


@functools.lru_cache(maxsize=12)
def _position_encoding(height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    half = dim // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    k = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = 10000 ** (2 * torch.div(k, 2, rounding_mode="floor") / half)

    def encode(t: Tensor) -> Tensor:  # (N,) -> (N, half): sin on even channels, cos on odd
        p = t[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, dim).to(dtype)


class _Attention(nn.Module):
    """Parameters of ``nn.MultiheadAttention`` (same names), evaluated batch-first with SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # (B, Nq, D), (B, Nk, D), (B, Nk, D)
        b, nq, d = q.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)

        def heads(t: Tensor) -> Tensor:  # (B, N, D) -> (B, heads, N, D / heads)
            return t.unflatten(-1, (self.heads, d // self.heads)).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(F.linear(q, w_q, b_q)), heads(F.linear(k, w_k, b_k)),
                                             heads(F.linear(v, w_v, b_v)))
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, d))


class _CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.multihead_attn = _Attention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_key: Tensor) -> Tensor:
        return self.norm(tgt + self.multihead_attn(tgt + query_pos, memory_key, memory))


class _SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        qk = tgt + query_pos
        return self.norm(tgt + self.self_attn(qk, qk, tgt))


class _FFNLayer(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(linear_act(tgt, self.linear1.weight, self.linear1.bias, "relu")))


class _MLP(nn.Module):
    def __init__(self, dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = linear_act(x, layer.weight, layer.bias, "relu")
        return self.layers[-1](x)


class MultiScaleColorDecoder(nn.Module):
    """Learned colour queries attending, in turn, to the S/16, S/8 and S/4 pixel-decoder maps (post-norm).

    :meth:`forward` returns the colour embeddings ``E`` (B, num_queries, hidden); the caller forms
    ``sum_c E[q, c] * image_features[c]``.
    """

    def __init__(self, in_channels: list[int], hidden_dim: int, num_queries: int, num_heads: int,
                 dim_feedforward: int, dec_layers: int, num_scales: int) -> None:
        super().__init__()
        self.num_scales = num_scales
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_scales, hidden_dim)
        self.input_proj = nn.ModuleList(nn.Conv2d(c, hidden_dim, 1) for c in in_channels)
        self.transformer_self_attention_layers = nn.ModuleList(
            _SelfAttentionLayer(hidden_dim, num_heads) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            _CrossAttentionLayer(hidden_dim, num_heads) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            _FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.color_embed = _MLP(hidden_dim)

    def forward(self, features: list[Tensor]) -> Tensor:
        memories, keys = [], []
        for level, feat in enumerate(features):  # feat: (B, C_l, H_l, W_l)
            src = self.input_proj[level](feat).flatten(2).transpose(1, 2)  # (B, H*W, hidden)
            src = src + self.level_embed.weight[level]
            pos = position_encoding(feat.shape[-2], feat.shape[-1], src.shape[-1], src.device, src.dtype)
            memories.append(src)
            keys.append(src + pos)
        batch = features[0].shape[0]
        tgt = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, hidden)
        query_pos = self.query_embed.weight.unsqueeze(0)
        for i, (cross, self_attn, ffn) in enumerate(zip(self.transformer_cross_attention_layers,
                                                         self.transformer_self_attention_layers,
                                                         self.transformer_ffn_layers, strict=True)):
            level = i % self.num_scales
            tgt = cross(tgt, query_pos, memories[level], keys[level])
            tgt = self_attn(tgt, query_pos)
            tgt = ffn(tgt)
            step()
        return self.color_embed(self.decoder_norm(tgt))  # (B, Q, hidden)


class DuelDecoder(nn.Module):
    """Pixel decoder (three UNet blocks + ``last_shuf``) and the colour decoder, under ``decoder.``."""

    def __init__(self, dims: tuple[int, ...], nf: int, num_queries: int, hidden_dim: int, num_heads: int,
                 dim_feedforward: int, dec_layers: int, num_scales: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            UnetBlockWide(dims[3], dims[2], nf),
            UnetBlockWide(nf, dims[1], nf),
            UnetBlockWide(nf, dims[0], nf // 2),
        ])
        self.last_shuf = _LastShuffle(nf // 2, hidden_dim)
        self.color_decoder = MultiScaleColorDecoder(
            [nf, nf, nf // 2], hidden_dim, num_queries, num_heads, dim_feedforward, dec_layers, num_scales)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Returns the three pixel-decoder maps (S/16, S/8, S/4) and the colour embeddings."""
        f0, f1, f2, f3 = features
        out0 = self.layers[0](f3, f2)  # (B, nf, S/16, S/16)
        step()
        out1 = self.layers[1](out0, f1)  # (B, nf, S/8, S/8)
        step()
        out2 = self.layers[2](out1, f0)  # (B, nf/2, S/4, S/4)
        step()
        maps = [out0, out1, out2]
        return maps, self.color_decoder(maps)
