"""Which outputs of a node are connected in the prompt that is running, so that unused ones are not computed.

ComfyUI runs every output of a node, connected or not, and caches them under a key made of the node's inputs
only. A node that skips an unconnected output must therefore also make that choice part of its cache key, or a
later run that connects the output would get the skipped (``None``) value from the cache. So the decision is
made once, in ``fingerprint_inputs`` (which ComfyUI folds into the cache key, and calls for every node before
running the prompt), recorded, and read back by ``execute``:

    @classmethod
    def fingerprint_inputs(cls, **_inputs):
        return decide_outputs(slot)          # part of the cache key: "linked" / "unused" / None

    def execute(...):
        if output_unused(slot): ...          # True only if fingerprint_inputs saw it unconnected

Anything unknown (another ComfyUI, no running prompt found, the node run outside a server) means "connected":
the output is computed as before. Works on ComfyUI 0.3.75 and current releases (feature-detected).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

logger = logging.getLogger("ComfyUI-DDColor")

_DECISIONS: OrderedDict[tuple[str, str, int], bool] = OrderedDict()  # (prompt_id, node_id, slot) -> unused
_MAX_DECISIONS = 256


def _context() -> tuple[str, str] | None:
    """``(prompt_id, node_id)`` of the node ComfyUI is calling now, if this ComfyUI tells."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    ctx = get_executing_context()
    if ctx is None or ctx.prompt_id is None or ctx.node_id is None:
        return None
    return str(ctx.prompt_id), str(ctx.node_id)


def _running_prompt(prompt_id: str) -> dict | None:
    """The API-format prompt with ``prompt_id`` from the server's queue of running prompts."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    queue = getattr(getattr(PromptServer, "instance", None), "prompt_queue", None)
    running = getattr(queue, "currently_running", None)
    if not isinstance(running, dict):
        return None
    for item in list(running.values()):  # (number, prompt_id, prompt, extra_data, outputs, ...)
        if isinstance(item, (tuple, list)) and len(item) > 2 and item[1] == prompt_id and isinstance(item[2], dict):
            return item[2]
    return None


def is_linked(prompt: dict, node_id: str, slot: int) -> bool:
    """True if any node of ``prompt`` takes output ``slot`` of ``node_id`` as an input."""
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for value in (inputs or {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == node_id and value[1] == slot:
                return True
    return False


def decide_outputs(slot: int) -> str | None:
    """Called from ``fingerprint_inputs``: record whether output ``slot`` is connected; return a cache-key part."""
    where = _context()
    prompt = _running_prompt(where[0]) if where else None
    if prompt is None:
        return None
    unused = not is_linked(prompt, where[1], slot)
    _DECISIONS[(*where, slot)] = unused
    _DECISIONS.move_to_end((*where, slot))
    while len(_DECISIONS) > _MAX_DECISIONS:
        _DECISIONS.popitem(last=False)
    return f"output {slot} unused" if unused else f"output {slot} linked"


def output_unused(slot: int) -> bool:
    """Called from ``execute``: True only if ``decide_outputs`` found output ``slot`` unconnected in this prompt."""
    where = _context()
    return bool(where) and _DECISIONS.get((*where, slot), False)
