"""The node interface saved workflows depend on: ids, input names, widget order, defaults, outputs, tooltips."""

from __future__ import annotations

import asyncio

import pytest

EXPECTED = {
    "DDColorModelLoader": {
        "display": "Load DDColor Model",
        "inputs": [("model_name", "COMBO", None), ("precision", "COMBO", "auto"), ("device", "COMBO", "auto")],
        "outputs": [("model", "DDCOLOR_MODEL")],
    },
    "DDColorResizeByPreset": {
        "display": "DDColor Resize by Preset",
        "inputs": [("image", "IMAGE", None), ("preset", "COMBO", "portrait"), ("custom_size", "INT", 512),
                   ("keep_aspect", "BOOLEAN", False)],
        "outputs": [("image", "IMAGE"), ("input_size", "INT"), ("keep_aspect", "BOOLEAN")],
    },
    "DDColorColorize": {
        "display": "DDColor Colorize (Lab)",
        "inputs": [("model", "DDCOLOR_MODEL", None), ("image", "IMAGE", None), ("input_size", "INT", 512),
                   ("keep_aspect", "BOOLEAN", False), ("batch_size", "INT", 4),
                   ("offload_after_run", "BOOLEAN", False)],
        "outputs": [("ab", "DDCOLOR_AB"), ("preview", "IMAGE")],
    },
    "DDColorTemporalSmooth": {
        "display": "DDColor Temporal Smooth (video)",
        "inputs": [("image", "IMAGE", None), ("ab", "DDCOLOR_AB", None), ("strength", "FLOAT", 0.75),
                   ("scene_cut_sensitivity", "FLOAT", 0.5)],
        "outputs": [("ab", "DDCOLOR_AB"), ("report", "STRING")],
    },
    "DDColorMergeLab": {
        "display": "DDColor Merge L + ab",
        "inputs": [("image", "IMAGE", None), ("ab", "DDCOLOR_AB", None), ("upsample", "COMBO", "bilinear"),
                   ("chroma", "FLOAT", 1.0)],
        "outputs": [("image", "IMAGE")],
    },
    "DDColorCompare": {
        "display": "DDColor Compare",
        "inputs": [("before", "IMAGE", None), ("after", "IMAGE", None), ("mode", "COMBO", "side_by_side"),
                   ("split_position", "FLOAT", 0.5)],
        "outputs": [("image", "IMAGE")],
    },
}


@pytest.fixture(scope="module")
def node_list(pack):
    extension = asyncio.run(pack.comfy_entrypoint())
    from comfy_api.latest import ComfyExtension

    assert isinstance(extension, ComfyExtension)
    return asyncio.run(extension.get_node_list())


def test_entrypoint_lists_every_node(node_list):
    assert [n.GET_SCHEMA().node_id for n in node_list] == list(EXPECTED)


def test_web_directory(pack):
    assert pack.WEB_DIRECTORY == "./web"


@pytest.mark.parametrize("node_id", list(EXPECTED))
def test_schema(node_list, node_id):
    node = next(n for n in node_list if n.GET_SCHEMA().node_id == node_id)
    schema = node.GET_SCHEMA()
    want = EXPECTED[node_id]
    assert schema.display_name == want["display"]
    assert schema.category == "image/color/DDColor"
    assert len(schema.description) > 60
    got_inputs = [(i.id, str(i.get_io_type()), getattr(i, "default", None)) for i in schema.inputs]
    assert got_inputs == want["inputs"]
    assert all(i.tooltip for i in schema.inputs)
    assert [(o.display_name, str(o.io_type)) for o in schema.outputs] == want["outputs"]
    assert all(o.tooltip for o in schema.outputs)
    # ComfyUI's V1 view (what /object_info serves and the UI uses): order and output names
    info = node.GET_NODE_INFO_V1()
    assert info["input_order"]["required"] == [i[0] for i in want["inputs"]]
    assert info["output_name"] == [o[0] for o in want["outputs"]]


def test_widget_ranges(nodes_pkg):
    required = {k: v for node in (nodes_pkg.DDColorColorize, nodes_pkg.DDColorResizeByPreset,
                                  nodes_pkg.DDColorMergeLab, nodes_pkg.DDColorCompare)
                for k, v in node.INPUT_TYPES()["required"].items()}
    assert {k: required["input_size"][1][k] for k in ("min", "max", "step")} == {"min": 64, "max": 2048, "step": 32}
    assert {k: required["custom_size"][1][k] for k in ("min", "max", "step")} == {"min": 64, "max": 2048, "step": 32}
    assert {k: required["batch_size"][1][k] for k in ("min", "max")} == {"min": 1, "max": 64}
    assert {k: required["chroma"][1][k] for k in ("min", "max", "step")} == {"min": 0.0, "max": 2.0, "step": 0.05}
    assert {k: required["split_position"][1][k] for k in ("min", "max")} == {"min": 0.0, "max": 1.0}
    assert required["upsample"][1]["options"] == ["nearest", "bilinear", "guided"]
    assert required["preset"][1]["options"] == ["portrait", "building", "custom"]
    assert required["mode"][1]["options"] == ["side_by_side", "split"]
    loader = nodes_pkg.DDColorModelLoader.INPUT_TYPES()["required"]
    assert loader["precision"][1]["options"] == ["auto", "fp32", "fp16", "bf16"]
    assert loader["device"][1]["options"] == ["auto", "cpu"]
