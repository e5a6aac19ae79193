"""Bad widget values are refused by ComfyUI's own prompt validation (what ``POST /prompt`` runs), before any work.

Each case builds an API-format prompt, registers the pack's nodes in ComfyUI's ``NODE_CLASS_MAPPINGS`` and runs
ComfyUI's ``execution.validate_prompt`` (0.3.75 here; set ``COMFYUI_DIR`` to run the same cases on another
ComfyUI). ComfyUI 0.3.75 does not check the choices of V3 combos and lets NaN through its min/max checks, so
without the nodes' ``validate_inputs`` these prompts would be queued and fail only after Colorize had run.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

GOOD_INPUTS = {
    "DDColorModelLoader": {"model_name": "tiny.safetensors", "precision": "auto", "device": "auto"},
    "DDColorResizeByPreset": {"preset": "portrait", "custom_size": 512, "keep_aspect": False},
    "DDColorColorize": {"input_size": 512, "keep_aspect": False, "batch_size": 4, "offload_after_run": False},
    "DDColorMergeLab": {"upsample": "bilinear", "chroma": 1.0},
    "DDColorCompare": {"mode": "side_by_side", "split_position": 0.5},
    "DDColorTemporalSmooth": {"strength": 0.75, "scene_cut_sensitivity": 0.5},
}

# (node, input, bad value, words the reason must contain)
BAD_VALUES = [
    ("DDColorModelLoader", "precision", "bogus", ["precision", "bogus", "fp32"]),
    ("DDColorModelLoader", "device", "bogus", ["device", "bogus", "cpu"]),
    ("DDColorModelLoader", "model_name", 123, ["model_name", "123", "text"]),
    ("DDColorModelLoader", "model_name", "no_such_model.pth", ["no_such_model.pth", "not found"]),
    ("DDColorResizeByPreset", "preset", "bogus", ["preset", "bogus", "portrait"]),
    ("DDColorResizeByPreset", "custom_size", 500, ["custom_size", "multiple of 32"]),
    ("DDColorColorize", "input_size", 4096, ["input_size", "4096"]),
    ("DDColorColorize", "batch_size", 0, ["batch_size", "0"]),
    ("DDColorColorize", "batch_size", 65, ["batch_size", "65"]),
    ("DDColorMergeLab", "upsample", "bogus", ["upsample", "bogus", "bilinear"]),
    ("DDColorMergeLab", "chroma", math.nan, ["chroma", "nan"]),
    ("DDColorMergeLab", "chroma", math.inf, ["chroma", "inf"]),
    ("DDColorMergeLab", "chroma", 5, ["chroma", "5"]),
    ("DDColorMergeLab", "chroma", -0.5, ["chroma", "-0.5"]),
    ("DDColorCompare", "mode", "bogus", ["mode", "bogus", "side_by_side"]),
    ("DDColorCompare", "split_position", 5, ["split_position", "5"]),
    ("DDColorCompare", "split_position", math.nan, ["split_position", "nan"]),
    ("DDColorTemporalSmooth", "strength", math.nan, ["strength", "nan"]),
    ("DDColorTemporalSmooth", "strength", -1, ["strength", "-1"]),
    ("DDColorTemporalSmooth", "scene_cut_sensitivity", math.nan, ["scene_cut_sensitivity", "nan"]),
]


@pytest.fixture()
def comfy_validation(nodes_pkg, model_dir, tiny_weights):
    """ComfyUI's ``validate_prompt`` with the pack's nodes registered and tiny weights in models/ddcolor."""
    import execution

    import nodes as comfy_nodes

    (model_dir / "tiny.safetensors").symlink_to(tiny_weights)
    added = {}
    for cls in nodes_pkg.NODES:
        node_id = cls.GET_SCHEMA().node_id
        if node_id not in comfy_nodes.NODE_CLASS_MAPPINGS:
            comfy_nodes.NODE_CLASS_MAPPINGS[node_id] = added[node_id] = cls

    def validate(prompt: dict) -> tuple[bool, dict]:
        prompt = json.loads(json.dumps(prompt))  # what the server gets: plain JSON (NaN stays NaN)
        valid, _error, _outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
        return valid, node_errors

    yield validate
    for node_id in added:
        comfy_nodes.NODE_CLASS_MAPPINGS.pop(node_id, None)


def full_prompt(**overrides) -> dict:
    """Every DDColor node in one API prompt (portrait preset + Temporal Smooth + Compare), widgets all good."""
    inputs = {node: dict(values) for node, values in GOOD_INPUTS.items()}
    for key, value in overrides.items():
        node, name = key.split(".")
        inputs[node][name] = value
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "DDColorModelLoader", "inputs": inputs["DDColorModelLoader"]},
        "3": {"class_type": "DDColorResizeByPreset", "inputs": {"image": ["1", 0], **inputs["DDColorResizeByPreset"]}},
        "4": {"class_type": "DDColorColorize",
              "inputs": {"model": ["2", 0], "image": ["3", 0], **inputs["DDColorColorize"]}},
        "8": {"class_type": "DDColorTemporalSmooth",
              "inputs": {"image": ["3", 0], "ab": ["4", 0], **inputs["DDColorTemporalSmooth"]}},
        "5": {"class_type": "DDColorMergeLab",
              "inputs": {"image": ["3", 0], "ab": ["8", 0], **inputs["DDColorMergeLab"]}},
        "6": {"class_type": "DDColorCompare",
              "inputs": {"before": ["3", 0], "after": ["5", 0], **inputs["DDColorCompare"]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }  # fmt: skip


NODE_OF = {"DDColorModelLoader": "2", "DDColorResizeByPreset": "3", "DDColorColorize": "4", "DDColorMergeLab": "5",
           "DDColorCompare": "6", "DDColorTemporalSmooth": "8"}


@pytest.fixture()
def example_image():
    """``example.png`` in ComfyUI's input folder, for LoadImage."""
    import folder_paths
    from PIL import Image

    folder = Path(folder_paths.get_input_directory())
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (128, 128, 128)).save(folder / "example.png")


def test_good_prompt_is_valid(comfy_validation, example_image):
    valid, node_errors = comfy_validation(full_prompt())
    assert valid is True and not node_errors, node_errors


@pytest.mark.parametrize(("node", "name", "value", "words"), BAD_VALUES,
                         ids=[f"{n}.{i}={v!r}" for n, i, v, _ in BAD_VALUES])
def test_bad_widget_value_is_refused_with_the_reason(comfy_validation, example_image, node, name, value, words):
    valid, node_errors = comfy_validation(full_prompt(**{f"{node}.{name}": value}))
    assert valid is False, f"{node}.{name}={value!r} was accepted: the prompt would run and fail later"
    assert set(node_errors) == {NODE_OF[node]}, node_errors  # only the node with the bad widget is in red
    text = json.dumps(node_errors[NODE_OF[node]]["errors"])
    for word in words:
        assert word in text, f"{word!r} missing from the reason: {text}"


def test_folder_without_weights_says_so(comfy_validation, example_image, model_dir):
    (model_dir / "hf_folder_without_weights").mkdir()
    (model_dir / "hf_folder_without_weights" / "config.json").write_text("{}")
    valid, node_errors = comfy_validation(full_prompt(**{"DDColorModelLoader.model_name": "hf_folder_without_weights"}))
    assert valid is False
    text = json.dumps(node_errors["2"]["errors"])
    assert "has no weights" in text and "model.safetensors" in text, text
    assert "not found" not in text, text


def test_linked_widgets_are_checked_when_the_node_runs(comfy_validation, example_image):
    # input_size comes from Resize by Preset: unknown before the run, so validation must not refuse it
    prompt = full_prompt()
    prompt["4"]["inputs"]["input_size"] = ["3", 1]
    valid, node_errors = comfy_validation(prompt)
    assert valid is True and not node_errors, node_errors
