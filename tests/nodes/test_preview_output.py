"""Colorize builds its full-resolution ``preview`` only when something is connected to it.

Runs prompts through ComfyUI's own ``PromptQueue`` and ``PromptExecutor`` in this process (what the server's
prompt worker does), so ComfyUI's output cache is exercised for real: running a prompt without the preview and
then one that connects it must give the second one a real picture, not a cached empty output.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest


class _QuietServer:
    """What PromptExecutor and PromptQueue use of ComfyUI's server."""

    client_id = None
    last_node_id = None

    def send_sync(self, *_args, **_kwargs) -> None:
        pass

    def queue_updated(self) -> None:
        pass


@pytest.fixture()
def run_prompt(nodes_pkg, model_dir, tiny_weights, monkeypatch):
    import execution
    import folder_paths
    from PIL import Image

    import nodes as comfy_nodes

    (model_dir / "tiny.safetensors").symlink_to(tiny_weights)
    input_dir = Path(folder_paths.get_input_directory())
    input_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64), (120, 120, 120)).save(input_dir / "preview_test.png")
    for cls in nodes_pkg.NODES:
        monkeypatch.setitem(comfy_nodes.NODE_CLASS_MAPPINGS, cls.GET_SCHEMA().node_id, cls)
    fake = _QuietServer()
    queue = execution.PromptQueue(fake)
    # the running prompt is found where the server keeps it: PromptServer.instance.prompt_queue (ComfyUI's
    # server module itself needs the web frontend package, so a stand-in holds the real queue)
    holder = SimpleNamespace(instance=SimpleNamespace(prompt_queue=queue))
    monkeypatch.setitem(sys.modules, "server", SimpleNamespace(PromptServer=holder))
    cache_args = {"lru": 0, "ram": 0, "ram_inactive": 0}  # what main.py passes (0.3.75 reads the first two)
    executor = execution.PromptExecutor(fake, cache_type=execution.CacheType.CLASSIC, cache_args=cache_args)

    def run(prompt: dict) -> dict:
        import asyncio

        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        assert valid, (error, node_errors)
        queue.put((0, prompt_id, prompt, {}, outputs))
        item, item_id = queue.get()
        executor.execute(item[2], prompt_id, item[3], item[4])
        queue.task_done(item_id, {}, status=None)
        assert executor.success, executor.status_messages[-1]
        return executor.history_result["outputs"]

    return run


def _prompt(preview_connected: bool) -> dict:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "preview_test.png"}},
        "2": {"class_type": "DDColorModelLoader",
              "inputs": {"model_name": "tiny.safetensors", "precision": "auto", "device": "auto"}},
        "4": {"class_type": "DDColorColorize",
              "inputs": {"model": ["2", 0], "image": ["1", 0], "input_size": 64, "keep_aspect": False,
                         "batch_size": 4, "offload_after_run": False}},
        "5": {"class_type": "DDColorMergeLab",
              "inputs": {"image": ["1", 0], "ab": ["4", 0], "upsample": "nearest", "chroma": 1.0}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }  # fmt: skip
    if preview_connected:
        prompt["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}}
    return prompt


@pytest.fixture()
def preview_builds(dd, monkeypatch):
    """Count the full-resolution pictures Colorize builds for ``preview`` (bilinear; Merge uses nearest here)."""
    real = dd.merge_lab
    calls = []

    def merge_lab(image, ab, upsample="nearest", chroma=1.0):
        if upsample == "bilinear":
            calls.append(tuple(image.shape))
        return real(image, ab, upsample=upsample, chroma=chroma)

    monkeypatch.setattr(dd, "merge_lab", merge_lab)
    return calls


def test_unconnected_preview_is_not_built(run_prompt, preview_builds):
    outputs = run_prompt(_prompt(preview_connected=False))
    assert "6" in outputs  # the colorized photo is there
    assert preview_builds == [], "Colorize built a preview that nothing uses"


def test_connecting_the_preview_later_is_not_served_from_the_cache(run_prompt, preview_builds):
    run_prompt(_prompt(preview_connected=False))
    assert preview_builds == []
    outputs = run_prompt(_prompt(preview_connected=True))  # same inputs: Colorize would be a cache hit
    assert preview_builds == [(1, 64, 96, 3)]
    assert len(outputs["7"]["images"]) == 1
    outputs = run_prompt(_prompt(preview_connected=False))
    assert "6" in outputs and "7" not in outputs

