"""The video preset in the real graph editor (headless Chromium): it opens from the template browser without a
warning, keeps its widget values, and the editor's own conversion equals workflows/api/ddcolor_video.json.
(Running it is tests/e2e/test_video.py.)"""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_ui import (  # noqa: F401  (browser_context and editor are fixtures used here)
    _CONVERT_JS,
    _FIT_VIEW_JS,
    _SET_WIDGET_JS,
    _STATE_JS,
    ARTIFACTS,
    WORKFLOWS,
    _core,
    browser_context,
    editor,
)
from tests.e2e.test_video import make_film

pytestmark = pytest.mark.e2e
PRESET = "ddcolor_video"


@pytest.mark.ui
@pytest.mark.timeout(900)
def test_video_preset_loads_in_the_graph_editor_and_converts_to_its_api_twin(editor, comfy_server, tmp_path):  # noqa: F811
    page = editor.page
    workflow = json.loads((WORKFLOWS / f"{PRESET}.json").read_text(encoding="utf-8"))
    film = tmp_path / "example.mp4"  # the preset's placeholder name, so the editor finds the file it names
    make_film(film, audio=True)
    comfy_server.upload(film)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    mark = len(editor.console)
    editor.open_template(PRESET)
    page.wait_for_function("(count) => window.app.graph.nodes.length === count", arg=len(workflow["nodes"]),
                           timeout=30_000)
    page.wait_for_timeout(2500)  # dialogs and toasts open asynchronously
    page.evaluate(_FIT_VIEW_JS)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{PRESET}.png"))

    assert not editor.visible_texts(".p-dialog"), "a dialog opened on load"
    assert not editor.visible_texts(".p-toast-message"), "a notification appeared on load"
    state = page.evaluate(_STATE_JS)
    bad = [(n["id"], n["type"]) for n in state["nodes"] if n["has_errors"] or not n["registered"]]
    assert not bad, f"nodes missing or in error in the editor: {bad}"
    saved = {n["id"]: n["widgets_values"] for n in state["saved"]}
    for node in workflow["nodes"]:
        assert saved.get(node["id"]) == node["widgets_values"], (
            f"widget values of {node['type']} #{node['id']} changed on load: {node['widgets_values']} -> "
            f"{saved.get(node['id'])}")

    page.evaluate(_SET_WIDGET_JS, {"type": "DDColorModelLoader", "name": "model_name",
                                   "value": comfy_server.model_name})
    prompt = page.evaluate(_CONVERT_JS)
    # Load Video's preview widget exists only in the editor (like Load Image's upload button); the server
    # ignores it, and the API twin leaves it out
    assert prompt["1"]["inputs"].pop("video-preview", "") == ""
    expected = json.loads((WORKFLOWS / "api" / f"{PRESET}.json").read_text(encoding="utf-8"))
    for node in expected.values():
        if node["class_type"] == "DDColorModelLoader":
            node["inputs"]["model_name"] = comfy_server.model_name
    assert _core(prompt) == _core(expected), (
        f"graphToPrompt() differs from the API twin:\neditor: {json.dumps(_core(prompt), sort_keys=True)}\n"
        f"api:    {json.dumps(_core(expected), sort_keys=True)}")
    problems = editor.problems_since(mark)
    assert not problems, "console errors/warnings:\n" + "\n".join(problems)
