"""ComfyUI-DDColor: colorize black-and-white photos with DDColor (ICCV 2023) in ComfyUI.

This file only wires the pack into ComfyUI; the nodes live in ``nodes/`` and the network in ``ddcolor/``.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import DDColorExtension

    return DDColorExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
