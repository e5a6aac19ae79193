"""ComfyUI V3 nodes of ComfyUI-DDColor (thin: the work is done in ``ddcolor``)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .colorize import DDColorColorize
from .compare import DDColorCompare
from .loader import DDColorModelLoader, register_model_folder
from .merge import DDColorMergeLab
from .resize import DDColorResizeByPreset
from .temporal import DDColorTemporalSmooth

NODES: list[type[io.ComfyNode]] = [
    DDColorModelLoader,
    DDColorResizeByPreset,
    DDColorColorize,
    DDColorTemporalSmooth,
    DDColorMergeLab,
    DDColorCompare,
]


class DDColorExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_model_folder()
        return list(NODES)


__all__ = ["NODES", "DDColorExtension", "register_model_folder"]
