"""The pack in a real ComfyUI server, used over the HTTP API the way the batch tools and the graph editor do.

* ``/object_info`` shows every node with the inputs, types, defaults and tooltips we ship;
* the server starts without an import error for the pack;
* both API presets (portrait, building) run from ``/upload/image`` to ``/view``: progress arrives on ``/ws``,
  the saved picture has the photo's size, has colour, and equals ``ddcolor.colorize`` with the same settings.
"""

from __future__ import annotations

import re
import uuid

import cv2
import numpy as np
import pytest
import torch

from tests.e2e.server import REPO_ROOT, ComfyServer, load_api_preset, node_ids, set_inputs

pytestmark = pytest.mark.e2e

PACK_NODES = ("DDColorModelLoader", "DDColorResizeByPreset", "DDColorColorize", "DDColorMergeLab", "DDColorCompare",
              "DDColorTemporalSmooth")
OFFICIAL = ("ddcolor_modelscope.pth", "ddcolor_paper.pth", "ddcolor_artistic.pth", "ddcolor_paper_tiny.pth")

# node id -> (display name, [(input, type, expected options subset)], [output types])
EXPECTED_SCHEMA = {
    "DDColorModelLoader": (
        "Load DDColor Model",
        [
            ("model_name", "COMBO", {}),
            ("precision", "COMBO", {"options": ["auto", "fp32", "fp16", "bf16"], "default": "auto"}),
            ("device", "COMBO", {"options": ["auto", "cpu"], "default": "auto"}),
        ],
        ["DDCOLOR_MODEL"],
    ),
    "DDColorResizeByPreset": (
        "DDColor Resize by Preset",
        [
            ("image", "IMAGE", {}),
            ("preset", "COMBO", {"options": ["portrait", "building", "custom"], "default": "portrait"}),
            ("custom_size", "INT", {"default": 512, "min": 64, "max": 2048, "step": 32}),
            ("keep_aspect", "BOOLEAN", {"default": False}),
        ],
        ["IMAGE", "INT", "BOOLEAN"],
    ),
    "DDColorColorize": (
        "DDColor Colorize (Lab)",
        [
            ("model", "DDCOLOR_MODEL", {}),
            ("image", "IMAGE", {}),
            ("input_size", "INT", {"default": 512, "min": 64, "max": 2048, "step": 32}),
            ("keep_aspect", "BOOLEAN", {"default": False}),
            ("batch_size", "INT", {"default": 4, "min": 1, "max": 64}),
            ("offload_after_run", "BOOLEAN", {"default": False}),
        ],
        ["DDCOLOR_AB", "IMAGE"],
    ),
    "DDColorMergeLab": (
        "DDColor Merge L + ab",
        [
            ("image", "IMAGE", {}),
            ("ab", "DDCOLOR_AB", {}),
            ("upsample", "COMBO", {"options": ["nearest", "bilinear", "guided"], "default": "bilinear"}),
            ("chroma", "FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0}),
        ],
        ["IMAGE"],
    ),
    "DDColorCompare": (
        "DDColor Compare",
        [
            ("before", "IMAGE", {}),
            ("after", "IMAGE", {}),
            ("mode", "COMBO", {"default": "side_by_side"}),
            ("split_position", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0}),
        ],
        ["IMAGE"],
    ),
    "DDColorTemporalSmooth": (
        "DDColor Temporal Smooth (video)",
        [
            ("image", "IMAGE", {}),
            ("ab", "DDCOLOR_AB", {}),
            ("strength", "FLOAT", {"default": 0.75, "min": 0.0, "max": 0.95}),
            ("scene_cut_sensitivity", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0}),
        ],
        ["DDCOLOR_AB", "STRING"],
    ),
}


def _normalise_input(spec: list) -> tuple[str, dict]:
    """``(type, options)`` of one ``/object_info`` input, for both the V1 and the V3 way of listing combos."""
    kind = spec[0]
    opts = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        opts.setdefault("options", kind)
        kind = "COMBO"
    return kind, opts


def startup_log(server: ComfyServer) -> str:
    """The log of the first start, up to ComfyUI's "Starting server" line (import errors are reported there)."""
    text = server.log_text()
    end = text.find("Starting server")
    return text if end < 0 else text[:end]


def grey_photo(path, width: int, height: int) -> np.ndarray:
    """A black-and-white photo (RGB with equal channels) made from the test fixture, saved as PNG at ``path``."""
    src = cv2.imread(str(REPO_ROOT / "tests" / "data" / "fixture_input.png"), cv2.IMREAD_GRAYSCALE)
    grey = cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    cv2.imwrite(str(path), rgb)
    return rgb


def mean_chroma(rgb_uint8: np.ndarray) -> float:
    """Mean Lab chroma sqrt(a^2 + b^2) of an RGB uint8 picture (0 for black and white)."""
    lab = cv2.cvtColor(rgb_uint8.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return float(np.sqrt(lab[..., 1] ** 2 + lab[..., 2] ** 2).mean())


def save_image_uint8(x: torch.Tensor) -> np.ndarray:
    """What ComfyUI's SaveImage writes for one IMAGE: ``clip(255 * x)`` truncated to uint8."""
    return np.clip(255.0 * x.cpu().numpy(), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference_model(comfy_server):
    import ddcolor

    return ddcolor.load_model(comfy_server.models_dir / comfy_server.model_name, device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- start-up
def test_pack_imports_without_errors(comfy_server):
    log = startup_log(comfy_server)
    assert "Starting server" in comfy_server.log_text(), comfy_server.log_tail()
    bad = [
        line
        for line in log.splitlines()
        if "ComfyUI-DDColor" in line
        and re.search(r"IMPORT FAILED|Cannot import|Error while calling comfy_entrypoint|Traceback|Error", line)
    ]
    assert not bad, "the pack failed to load:\n" + "\n".join(bad) + "\n" + comfy_server.log_tail()
    # a traceback whose frames are in the pack's files
    for block in log.split("Traceback (most recent call last):")[1:]:
        frames = re.findall(r'File "([^"]+)"', block.split("\n\n")[0])
        ours = [f for f in frames if "ComfyUI-DDColor" in f or f.startswith(str(REPO_ROOT))]
        assert not ours, f"traceback from the pack while starting:\n{block[:3000]}"


# ---------------------------------------------------------------------------------------------- schema
def test_object_info_lists_every_node_with_its_inputs(comfy_server):
    info = comfy_server.object_info()
    missing = [n for n in PACK_NODES if n not in info]
    assert not missing, f"/object_info lacks {missing}; see {comfy_server.log_path}"
    for node_id, (display, inputs, outputs) in EXPECTED_SCHEMA.items():
        node = info[node_id]
        assert node["display_name"] == display
        assert node["category"].startswith("image/color"), node["category"]
        assert node["description"], f"{node_id} has no description"
        assert node["input_order"]["required"] == [name for name, _, _ in inputs], node_id
        assert node["output"] == outputs, node_id
        required = node["input"]["required"]
        for name, kind, expected in inputs:
            got_kind, opts = _normalise_input(required[name])
            assert got_kind == kind, f"{node_id}.{name}: type {got_kind}, expected {kind}"
            for key, value in expected.items():
                assert opts.get(key) == value, f"{node_id}.{name}: {key} = {opts.get(key)!r}, expected {value!r}"
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(node.get("output_tooltips") or [None]), f"{node_id}: outputs without tooltips"


def test_model_list_offers_files_in_models_ddcolor_and_official_names(comfy_server):
    _kind, opts = _normalise_input(comfy_server.object_info("DDColorModelLoader")["input"]["required"]["model_name"])
    names = opts["options"]
    assert comfy_server.model_name in names
    assert set(OFFICIAL) <= set(names)
    assert not any(n.startswith(".") or "/." in n for n in names), names  # no staging folders or hidden files


def test_node_can_be_fetched_alone(comfy_server):
    one = comfy_server.object_info("DDColorColorize")
    assert one["name"] == "DDColorColorize"
    assert one["python_module"].startswith("custom_nodes."), one["python_module"]


# ---------------------------------------------------------------------------------------------- presets
PRESET_PHOTOS = {
    # preset -> (width, height) of the uploaded black-and-white photo
    "ddcolor_portrait": (300, 220),
    "ddcolor_building": (420, 180),  # a wide street scene: keep_aspect matters
}


@pytest.mark.parametrize("preset_name", sorted(PRESET_PHOTOS))
def test_api_preset_end_to_end(comfy_server, reference_model, tmp_path, preset_name):
    from ddcolor import colorize
    from ddcolor.presets import choose_input_size

    width, height = PRESET_PHOTOS[preset_name]
    photo = grey_photo(tmp_path / "photo.png", width, height)
    assert mean_chroma(photo) < 0.5
    uploaded = comfy_server.upload(tmp_path / "photo.png", name=f"e2e_{preset_name}_{uuid.uuid4().hex[:8]}.png")

    prompt = load_api_preset(preset_name)
    set_inputs(prompt, "LoadImage", image=uploaded)
    set_inputs(prompt, "DDColorModelLoader", model_name=comfy_server.model_name)
    prompt_id = comfy_server.queue(prompt)
    msgs = comfy_server.wait(prompt_id, timeout=300)
    types = [m["type"] for m in msgs]
    assert "execution_success" in types, f"{types}\n{[m for m in msgs if m['type'] == 'execution_error']}"

    # progress on /ws: the colorize node reports one step per image, ending at 1 of 1
    (colorize_id,) = node_ids(prompt, "DDColorColorize")
    progress = [m["data"] for m in msgs if m["type"] == "progress" and str(m["data"].get("node")) == colorize_id]
    assert progress, f"no progress message from DDColorColorize; got {types}"
    assert progress[-1]["max"] == 1 and progress[-1]["value"] == 1, progress

    # /history lists the saved picture, which is on disk
    entry = comfy_server.history(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (save_id,) = node_ids(prompt, "SaveImage")
    saved = entry["outputs"][save_id]["images"]
    assert len(saved) == 1 and saved[0]["type"] == "output"
    assert saved[0]["subfolder"] == "DDColor"
    assert (comfy_server.output_dir / saved[0]["subfolder"] / saved[0]["filename"]).is_file()

    # /view: same size as the photo, coloured, equal to ddcolor.colorize with the preset's settings
    result = comfy_server.view_image(saved[0])
    assert result.shape == (height, width, 3)
    assert mean_chroma(result) > 2.0, "the saved picture has (almost) no colour"

    resize = prompt[node_ids(prompt, "DDColorResizeByPreset")[0]]["inputs"]
    merge = prompt[node_ids(prompt, "DDColorMergeLab")[0]]["inputs"]
    input_size = choose_input_size(height, width, resize["preset"], resize["custom_size"])
    image = torch.from_numpy(photo.astype(np.float32) / 255.0)[None]
    expected = colorize(
        reference_model, image, input_size=input_size,
        resize_mode="keep_aspect" if resize["keep_aspect"] else "square",
        upsample=merge["upsample"], chroma=float(merge["chroma"]),
    )  # fmt: skip
    want = save_image_uint8(expected[0])
    diff = np.abs(result.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, f"max difference {diff.max()} from ddcolor.colorize (input_size={input_size})"
    assert (diff == 0).mean() > 0.99, f"only {(diff == 0).mean():.3%} of the values equal ddcolor.colorize"

    # the before/after comparison is shown as a preview, twice as wide
    (preview_id,) = node_ids(prompt, "PreviewImage")
    (compare_info,) = entry["outputs"][preview_id]["images"]
    assert compare_info["type"] == "temp"
    compare = comfy_server.view_image(compare_info)
    assert compare.shape == (height, 2 * width, 3)
    assert np.abs(compare[:, width:].astype(np.int16) - result.astype(np.int16)).max() <= 1
