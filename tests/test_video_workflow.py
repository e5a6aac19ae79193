"""The video preset (workflows/ddcolor_video.json and its API twin) against the nodes users actually get.

Node schemas come from the real node classes: ours through the pack, the core video nodes (Load Video, Get Video
Components, Create Video, Save Video) from the installed ComfyUI's ``comfy_extras/nodes_video.py``.
"""

from __future__ import annotations

import importlib
import json

import pytest

from tests.test_workflows import (
    API_DIR,
    CJK,
    VIRTUAL,
    WORKFLOWS,
    _normalise_v1,
    by_type,
    check_value,
    comfyui_root,
    real_schema,
    socket_inputs_of,
    widget_values,
    widgets_of,
)

CORE_VIDEO = ("LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo")
TITLE_HEIGHT, SLOT_HEIGHT = 30, 20  # the graph editor's node title bar and slot spacing


@pytest.fixture(scope="module")
def known() -> dict[str, dict]:
    ours = real_schema()
    if ours is None or comfyui_root() is None:
        pytest.skip("needs the pack and ComfyUI")
    nodes_video = importlib.import_module("comfy_extras.nodes_video")
    core = {}
    for name in CORE_VIDEO:
        info = _normalise_v1(getattr(nodes_video, name).GET_NODE_INFO_V1())
        if name == "LoadVideo":  # the graph editor adds its upload button (serialised as "image"), as for LoadImage
            info["inputs"] = [("file", "COMBO", None, {"options": None}), ("upload", "IMAGEUPLOAD", "image", {})]
        core[name] = info
    return {**ours, **core, **VIRTUAL}


@pytest.fixture(scope="module")
def ui() -> dict:
    return json.loads((WORKFLOWS / "ddcolor_video.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def api() -> dict:
    return json.loads((API_DIR / "ddcolor_video.json").read_text(encoding="utf-8"))


def _source(ui: dict, node: dict, name: str) -> tuple[str, str]:
    entry = next(i for i in node["inputs"] if i["name"] == name)
    assert entry["link"] is not None, f"{node['type']}.{name} is not connected"
    link = next(lk for lk in ui["links"] if lk[0] == entry["link"])
    origin = next(n for n in ui["nodes"] if n["id"] == link[1])
    return origin["type"], origin["outputs"][link[2]]["name"]


def test_the_core_video_nodes_exist_in_this_comfyui(known):
    for name in CORE_VIDEO:
        assert name in known


def test_ui_format_links_and_widgets(ui, known):
    assert ui["version"] == 0.4
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert sorted(n["order"] for n in ui["nodes"]) == list(range(len(nodes)))
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max(lk[0] for lk in ui["links"])
    for link_id, origin, origin_slot, target, target_slot, typ in ui["links"]:
        out = nodes[origin]["outputs"][origin_slot]
        inp = nodes[target]["inputs"][target_slot]
        assert link_id in out["links"] and inp["link"] == link_id, link_id
        assert out["type"] == inp["type"] == typ, link_id
    for node in ui["nodes"]:
        schema = known[node["type"]]
        assert node["mode"] == 0
        assert [(o["name"], o["type"]) for o in node["outputs"]] == schema["outputs"], node["type"]
        assert [(i["name"], i["type"]) for i in node["inputs"] if "widget" not in i] == socket_inputs_of(schema)
        widgets = widgets_of(schema)
        assert len(node["widgets_values"]) == sum(w[4] for w in widgets), node["type"]
        i = 0
        for name, typ, _default, extra, slots in widgets:
            check_value(f"video: {node['type']}.{name}", typ, node["widgets_values"][i], extra)
            i += slots


def test_the_chain_of_the_issue(ui, known):
    """Load Video -> Get Video Components -> Resize by Preset -> Colorize -> Temporal Smooth -> Merge ->
    Create Video (same fps, audio kept) -> Save Video."""
    resize, colorize = by_type(ui, "DDColorResizeByPreset"), by_type(ui, "DDColorColorize")
    smooth, merge = by_type(ui, "DDColorTemporalSmooth"), by_type(ui, "DDColorMergeLab")
    create, save = by_type(ui, "CreateVideo"), by_type(ui, "SaveVideo")
    assert _source(ui, by_type(ui, "GetVideoComponents"), "video") == ("LoadVideo", "VIDEO")
    assert _source(ui, resize, "image") == ("GetVideoComponents", "images")
    assert _source(ui, colorize, "image") == ("DDColorResizeByPreset", "image")
    assert _source(ui, colorize, "input_size") == ("DDColorResizeByPreset", "input_size")
    assert _source(ui, colorize, "model") == ("DDColorModelLoader", "model")
    assert _source(ui, smooth, "ab") == ("DDColorColorize", "ab")
    assert _source(ui, smooth, "image") == ("DDColorResizeByPreset", "image")
    assert _source(ui, merge, "ab") == ("DDColorTemporalSmooth", "ab")
    assert _source(ui, merge, "image")[1] in ("images", "image")  # the frames themselves (Resize passes them on)
    assert _source(ui, create, "images") == ("DDColorMergeLab", "image")
    assert _source(ui, create, "fps") == ("GetVideoComponents", "fps")
    assert _source(ui, create, "audio") == ("GetVideoComponents", "audio")
    assert _source(ui, save, "video") == ("CreateVideo", "VIDEO")
    assert widget_values(smooth, known) == {"strength": 0.75, "scene_cut_sensitivity": 0.5}
    assert widget_values(save, known)["filename_prefix"] == "DDColor/video"
    assert widget_values(by_type(ui, "LoadVideo"), known)["file"] == "example.mp4"


def _slot_y(node: dict, slot: int) -> float:
    return node["pos"][1] + SLOT_HEIGHT * (slot + 0.7)


def test_no_wire_passes_under_a_node(ui):
    """Each link drawn as a straight line from its output slot to its input slot misses every other node's box
    (title bar included)."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, _t in ui["links"]:
        a, b = nodes[origin], nodes[target]
        x0, y0 = a["pos"][0] + a["size"][0], _slot_y(a, origin_slot)
        x1, y1 = b["pos"][0], _slot_y(b, target_slot)
        for other in ui["nodes"]:
            if other["id"] in (origin, target):
                continue
            left, top = other["pos"][0], other["pos"][1] - TITLE_HEIGHT
            right, bottom = left + other["size"][0], other["pos"][1] + other["size"][1]
            for k in range(201):
                f = k / 200
                x, y = x0 + f * (x1 - x0), y0 + f * (y1 - y0)
                assert not (left <= x <= right and top <= y <= bottom), (
                    f"link {link_id} ({a['type']} -> {b['type']}) passes under {other['type']}")


def test_groups_name_the_steps_and_hold_their_nodes(ui):
    titles = [g["title"] for g in ui["groups"]]
    assert [t.split(" · ")[0] for t in titles] == ["1", "2", "3"], titles
    assert all(CJK.search(t) for t in titles)
    members = {"1": {"LoadVideo", "GetVideoComponents"},
               "2": {"DDColorResizeByPreset", "DDColorModelLoader", "DDColorColorize", "DDColorTemporalSmooth"},
               "3": {"DDColorMergeLab", "CreateVideo", "SaveVideo"}}
    for group in ui["groups"]:
        gx, gy, gw, gh = group["bounding"]
        for node in ui["nodes"]:
            x, y = node["pos"]
            w, h = node["size"]
            inside = gx <= x and gy <= y - TITLE_HEIGHT and x + w <= gx + gw and y + h <= gy + gh
            assert inside == (node["type"] in members[group["title"].split(" · ")[0]]), (group["title"], node["type"])


def test_the_read_me_note_is_bilingual_and_says_what_ram_allows(ui):
    notes = [n for n in ui["nodes"] if n["type"] in VIRTUAL]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    assert "How to use" in text and "用法" in text and CJK.search(text)
    for word in ("Load Video", "strength", "scene_cut_sensitivity", "chroma", "GB", "parts", "models/ddcolor"):
        assert word in text, word
    assert notes[0]["size"][0] <= 420


def test_api_twin_matches_the_ui_preset(ui, api, known):
    links = {lk[0]: lk for lk in ui["links"]}
    real_nodes = [n for n in ui["nodes"] if n["type"] not in VIRTUAL]
    assert sorted(api) == sorted(str(n["id"]) for n in real_nodes)
    for node in real_nodes:
        entry = api[str(node["id"])]
        assert entry["class_type"] == node["type"]
        expected = {k: v for k, v in widget_values(node, known).items() if k != "upload"}
        for i in node["inputs"]:
            if i["link"] is not None:
                expected[i["name"]] = [str(links[i["link"]][1]), links[i["link"]][2]]
        assert entry["inputs"] == expected, node["type"]
        for name, typ, _d, extra in known[node["type"]]["inputs"]:
            value = entry["inputs"].get(name)
            if name == "upload" or isinstance(value, list):
                continue
            check_value(f"video API {node['type']}.{name}", typ, value, extra)


def test_listed_as_a_template_with_a_thumbnail():
    from PIL import Image

    with Image.open(WORKFLOWS / "ddcolor_video.jpg") as im:
        assert im.format == "JPEG" and min(im.size) >= 200
