"""Hyper-parameters of a DDColor network, detected from its weights.

Only the encoder differs between the released checkpoints (SPEC §2); every other value is read from weight
shapes where it can be, and fixed where it cannot (commented below).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import UnsupportedModelError

# ConvNeXt sizes of the official DDColor code (`convnext-t` and `convnext-l` are released; `-s`/`-b` exist
# upstream and build the same way).
ENCODERS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext-t": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext-s": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext-b": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext-l": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}
VARIANTS = {"convnext-t": "tiny", "convnext-s": "small", "convnext-b": "base", "convnext-l": "large"}


@dataclass(frozen=True)
class DDColorConfig:
    """Everything needed to build a :class:`~ddcolor.arch.DDColor` (the released models use the defaults)."""

    encoder_name: str = "convnext-l"
    """One of :data:`ENCODERS`."""
    depths: tuple[int, ...] = ENCODERS["convnext-l"][0]
    dims: tuple[int, ...] = ENCODERS["convnext-l"][1]
    nf: int = 512
    """Width of the first two pixel-decoder blocks (the third is ``nf // 2``)."""
    num_queries: int = 100
    num_scales: int = 3
    dec_layers: int = 9
    num_output_channels: int = 2
    hidden_dim: int = 256  # fixed inside the official decoder; checked against the weights
    num_heads: int = 8  # cannot be deduced from the state_dict: fixed in the official code
    dim_feedforward: int = 2048

    @property
    def variant(self) -> str:
        """``"tiny"`` for ddcolor_paper_tiny, ``"large"`` for paper / modelscope / artistic."""
        return VARIANTS[self.encoder_name]

    @classmethod
    def for_encoder(cls, encoder_name: str) -> DDColorConfig:
        depths, dims = ENCODERS[encoder_name]
        return cls(encoder_name=encoder_name, depths=depths, dims=dims)


def _count_indexed(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if found != set(range(len(found))):
        raise UnsupportedModelError(f"layer indices under {prefix!r} are not contiguous: {sorted(found)}")
    return len(found)


def detect_config(state_dict: Mapping[str, torch.Tensor], source: str = "the weights") -> DDColorConfig:
    """Read a :class:`DDColorConfig` from an official-format state dict (spectral-norm keys not yet folded).

    Raises:
        UnsupportedModelError: the state dict is not a DDColor network of a known encoder size.
    """
    keys = list(state_dict)

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise UnsupportedModelError(
                f"{source} is not a DDColor checkpoint: key {key!r} is missing "
                f"(found {len(keys)} keys, e.g. {keys[:3]}). Use one of the official DDColor weights "
                "(ddcolor_paper.pth, ddcolor_modelscope.pth, ddcolor_artistic.pth, ddcolor_paper_tiny.pth)."
            )
        return tuple(state_dict[key].shape)

    stem = shape("encoder.arch.downsample_layers.0.0.weight")
    depths = tuple(_count_indexed(keys, f"encoder.arch.stages.{i}.") for i in range(4))
    dims = tuple(shape(f"encoder.arch.norm{i}.weight")[0] for i in range(4))
    encoder = next((name for name, spec in ENCODERS.items() if spec == (depths, dims)), None)
    if encoder is None or stem[0] != dims[0]:
        known = ", ".join(f"{n} (depths {list(d)}, dims {list(c)})" for n, (d, c) in ENCODERS.items())
        raise UnsupportedModelError(
            f"{source}: unknown DDColor encoder with depths {list(depths)} and dims {list(dims)}; "
            f"supported: {known}."
        )
    cd = "decoder.color_decoder."
    num_queries, hidden = shape(cd + "query_feat.weight")
    return DDColorConfig(
        encoder_name=encoder,
        depths=depths,
        dims=dims,
        nf=shape("decoder.layers.0.conv.0.weight_orig")[0],
        num_queries=num_queries,
        num_scales=shape(cd + "level_embed.weight")[0],
        dec_layers=_count_indexed(keys, cd + "transformer_ffn_layers."),
        num_output_channels=shape("refine_net.0.0.weight_orig")[0],
        hidden_dim=hidden,
        dim_feedforward=shape(cd + "transformer_ffn_layers.0.linear1.weight")[0],
    )
