"""The two bundled presets, the way a user meets them: in the graph editor of a real ComfyUI server.

* the template browser's ``GET /api/workflow_templates`` lists both presets under this pack, and the files it
  then fetches (``/api/workflow_templates/ComfyUI-DDColor/<preset>.json`` and the ``.jpg`` thumbnail) are served;
* in the real graph-editor page (headless Debian ``chromium`` driven by Playwright), each preset is opened from
  the template browser (Templates > EXTENSIONS > ComfyUI-DDColor > the preset's card; the frontend fetches the
  file and loads it with its own ``app.loadGraphData``) without a missing-node / missing-model dialog, toast,
  console error, an invalid combo value, or a widget value that moved or was reset; screenshots are kept as
  ``artifacts/e2e/<preset>.png`` (the loaded graph), ``<preset>_with_photo.png`` and
  ``template_browser_<preset>.png``;
* the frontend's own ``app.graphToPrompt()`` converts it to the same prompt as its API twin in
  ``workflows/api/``, and that prompt (model = the synthetic tiny weights, image = an uploaded photo) runs on the
  server and writes a full-resolution colour PNG plus the before/after comparison;
* the README's copy-paste HTTP API example runs unchanged (apart from its settings) against the server;
* the comparer in *DDColor Compare* (``web/js/ddcolor_compare.js``), on the installed frontend (1.32) and a newer
  one when installed (``.cache/frontend-newest`` or ``DDCOLOR_NEW_FRONTEND_ROOT``): each preset, queued from the
  tab, fills it; dragging the divider puts the saved *before* picture left of it and *after* right of it
  (pixel colours of a screenshot against the pictures the page loaded), a click switches, the arrow keys move
  it with the node selected; a batch of 2 is stepped through; a 4-photo run shows live previews in Colorize;
  wires as the editor draws them never run under a node; different sizes, very tall/wide photos, a workflow
  saved before the comparer existed, a reload mid-run and a cached re-run break nothing. Any console error fails
  (on the newer frontend, any that names this pack: that frontend logs its own on a 0.3.75 server).
  Screenshots: ``artifacts/e2e/comparer_*.png``, ``*_after_run*.png``, ``live_preview*.png``.

The browser tests skip (with the reason) only when Playwright or ``/usr/bin/chromium`` is not installed;
``scripts/setup_env.sh`` installs both. ``DDCOLOR_CHROMIUM`` points at another Chromium binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from tests.e2e.server import PACK_FOLDER_NAME, REPO_ROOT

pytestmark = pytest.mark.e2e  # the graph-editor tests are marked ui as well

PRESETS = ("ddcolor_portrait", "ddcolor_building")
WORKFLOWS = REPO_ROOT / "workflows"
PHOTO = REPO_ROOT / "assets" / "astronaut_bw.jpg"
ARTIFACTS = REPO_ROOT / "artifacts" / "e2e"
CHROMIUM = Path(os.environ.get("DDCOLOR_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; scripts/setup_env.sh installs it)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (Debian: apt-get install chromium; scripts/setup_env.sh installs it)"
    return None


# ---------------------------------------------------------------------------------------------- template browser
def test_template_browser_lists_and_serves_both_presets(comfy_server):
    listed = comfy_server.get_json("/api/workflow_templates")
    assert PACK_FOLDER_NAME in listed, f"the template browser does not list this pack: {listed}"
    shipped = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert sorted(listed[PACK_FOLDER_NAME]) == shipped
    assert set(PRESETS) <= set(shipped)
    for preset in PRESETS:
        resp = comfy_server.http.get(f"{comfy_server.url}/api/workflow_templates/{PACK_FOLDER_NAME}/{preset}.json")
        assert resp.status_code == 200, f"{preset}.json is listed but not served (HTTP {resp.status_code})"
        assert resp.json() == json.loads((WORKFLOWS / f"{preset}.json").read_text(encoding="utf-8"))
        thumb = comfy_server.http.get(f"{comfy_server.url}/api/workflow_templates/{PACK_FOLDER_NAME}/{preset}.jpg")
        assert thumb.status_code == 200, f"thumbnail {preset}.jpg not served (HTTP {thumb.status_code})"
        assert thumb.content[:3] == b"\xff\xd8\xff", f"thumbnail {preset}.jpg is not a JPEG"


# ---------------------------------------------------------------------------------------------- graph editor
@pytest.fixture(scope="module")
def browser_context():
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ddcolor_chromium_")  # a fresh user-data-dir: no state from anywhere else
    pw = sync_playwright().start()
    try:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=LAUNCH_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()
    finally:
        pw.stop()
        shutil.rmtree(profile, ignore_errors=True)


class EditorPage:
    """One graph-editor tab; console messages are recorded, requests leaving the server are refused."""

    def __init__(self, context, server):
        self.server = server
        self.origin = urlparse(server.url).netloc
        self.page = context.new_page()
        self.console: list[dict] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.console.append(
            {"type": "pageerror", "text": f"{exc}\n{getattr(exc, 'stack', '') or ''}", "url": ""}))
        # nothing outside the test server exists here (no internet); refuse it at once instead of waiting on DNS
        self.page.route("**/*", self._route)

    def _route(self, route):
        if urlparse(route.request.url).netloc == self.origin or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    def _on_console(self, msg):
        self.console.append({"type": msg.type, "text": msg.text, "url": (msg.location or {}).get("url", "")})

    def open(self) -> None:
        # A ComfyUI install ships input/example.png, which LoadImage in templates (ours too) starts with; the
        # test server's --base-directory has an empty input/ folder, so give it the same file.
        shipped = self.server.app_dir / "input" / "example.png"
        if shipped.is_file() and not (self.server.input_dir / "example.png").exists():
            shutil.copyfile(shipped, self.server.input_dir / "example.png")
        # what a user has after closing the first-run template dialog; the warnings we test are on (the default)
        for key, value in (
            ("Comfy.TutorialCompleted", True),
            ("Comfy.Workflow.ShowMissingNodesWarning", True),
            ("Comfy.Workflow.ShowMissingModelsWarning", True),
        ):
            resp = self.server.http.post(f"{self.server.url}/api/settings/{key}", json=value, timeout=30)
            assert resp.status_code == 200, f"setting {key}: HTTP {resp.status_code}"
        self.page.goto(self.server.url + "/", wait_until="domcontentloaded", timeout=120_000)
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.app.vueAppReady", timeout=120_000
        )
        self.page.wait_for_timeout(1500)

    def open_template(self, preset: str, screenshot: Path | None = None) -> None:
        """Templates (sidebar) > EXTENSIONS > ComfyUI-DDColor > click the preset's card, as a user does."""
        self.page.evaluate(
            "async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }"
        )
        dialog = self.page.locator(".p-dialog").filter(has_text="Templates").first
        dialog.wait_for(state="visible", timeout=30_000)
        dialog.get_by_text(PACK_FOLDER_NAME, exact=True).first.click()  # the pack's entry under EXTENSIONS
        card = dialog.get_by_text(preset, exact=True).first
        card.wait_for(state="visible", timeout=30_000)
        self.page.wait_for_timeout(1000)  # thumbnails
        if screenshot is not None:
            self.page.screenshot(path=str(screenshot))
        card.click()
        dialog.wait_for(state="hidden", timeout=30_000)

    def problems_since(self, start: int, ours_only: bool = False, stop: int | None = None) -> list[str]:
        """Console errors/warnings logged after ``start`` (requests we refused to other hosts excepted).

        ``ours_only``: only those that name this pack (a newer frontend on ComfyUI 0.3.75 logs its own errors,
        e.g. for server routes 0.3.75 does not have).
        """
        found = []
        for entry in self.console[start:stop]:
            if entry["type"] not in ("error", "warning", "pageerror"):
                continue
            if ours_only and "ddcolor" not in (entry["text"] + entry["url"]).lower():
                continue
            refused = (
                entry["text"].startswith("Failed to load resource")
                and entry["url"]
                and (urlparse(entry["url"]).netloc != self.origin)
            )
            if not refused:
                found.append(f"{entry['type']}: {entry['text'][:500]} ({entry['url']})")
        return found

    def visible_texts(self, selector: str) -> list[str]:
        loc = self.page.locator(selector)
        return [loc.nth(i).inner_text() for i in range(loc.count()) if loc.nth(i).is_visible()]


def _open_editor(browser_context, server):
    """The graph editor of ``server`` in a new page, closed when the test is done (a generator fixture body)."""
    page = EditorPage(browser_context, server)
    try:
        page.open()
        yield page
    finally:
        page.page.close()


@pytest.fixture
def editor(browser_context, comfy_server):
    yield from _open_editor(browser_context, comfy_server)


_FIT_VIEW_JS = """
async () => {
    const commands = window.app.extensionManager && window.app.extensionManager.command;
    if (commands && commands.execute) await commands.execute("Comfy.Canvas.FitView");
    window.app.canvas.setDirty(true, true);
}
"""

_STATE_JS = """
() => {
    const LG = window.LiteGraph;
    const nodes = window.app.graph.nodes.map((n) => ({
        id: n.id,
        type: n.type,
        has_errors: !!n.has_errors,
        registered: !!(LG && LG.registered_node_types && LG.registered_node_types[n.type]),
        widgets: (n.widgets || []).map((w) => ({
            name: w.name,
            type: w.type,
            value: typeof w.value === "object" ? null : w.value,
            options: w.options && Array.isArray(w.options.values) ? w.options.values : null,
        })),
    }));
    const saved = window.app.graph.serialize().nodes.map((n) => ({id: n.id, widgets_values: n.widgets_values}));
    return {nodes, saved};
}
"""

_SET_WIDGET_JS = """
async ({type, name, value}) => {
    const nodes = window.app.graph.nodes.filter((n) => n.type === type);
    if (!nodes.length) throw new Error(`no ${type} node in the graph`);
    for (const node of nodes) {
        const w = (node.widgets || []).find((x) => x.name === name);
        if (!w) throw new Error(`${type} #${node.id} has no widget ${name}`);
        w.value = value;
        if (w.callback) w.callback(value);  // what picking the value in the editor does (LoadImage shows it)
    }
    window.app.graph.setDirtyCanvas(true, true);
}
"""

_CONVERT_JS = "async () => (await window.app.graphToPrompt()).output"


def _patched_api_twin(preset: str, model: str, image: str) -> dict:
    prompt = json.loads((WORKFLOWS / "api" / f"{preset}.json").read_text(encoding="utf-8"))
    for node in prompt.values():
        if node["class_type"] == "DDColorModelLoader":
            node["inputs"]["model_name"] = model
        elif node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
    return prompt


def _core(prompt: dict) -> dict:
    return {str(k): {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.mark.ui
@pytest.mark.timeout(900)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loads_in_graph_editor_converts_and_runs(editor, comfy_server, preset):
    page = editor.page
    workflow = json.loads((WORKFLOWS / f"{preset}.json").read_text(encoding="utf-8"))
    ours = {n["type"] for n in workflow["nodes"] if n["type"].startswith("DDColor")}
    assert ours, f"{preset}.json uses no DDColor node"

    # -- open it from the template browser, as a user does ---------------------------------------------------
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    mark = len(editor.console)
    editor.open_template(preset, screenshot=ARTIFACTS / f"template_browser_{preset}.png")
    page.wait_for_function(
        "(count) => window.app.graph.nodes.length === count", arg=len(workflow["nodes"]), timeout=30_000
    )
    page.wait_for_timeout(2500)  # missing-node / missing-model dialogs and toasts open asynchronously
    page.evaluate(_FIT_VIEW_JS)  # the whole graph in the picture, as the "fit view" button (".") does
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{preset}.png"))

    dialogs = editor.visible_texts(".p-dialog")
    assert not dialogs, f"{preset}: a dialog opened on load: {dialogs}"
    toasts = editor.visible_texts(".p-toast-message")
    assert not toasts, f"{preset}: a notification appeared on load: {toasts}"
    state = page.evaluate(_STATE_JS)
    bad = [(n["id"], n["type"]) for n in state["nodes"] if n["has_errors"] or not n["registered"]]
    assert not bad, f"{preset}: nodes missing or in error in the editor: {bad}"
    assert {n["type"] for n in state["nodes"]} == {n["type"] for n in workflow["nodes"]}

    saved = {n["id"]: n["widgets_values"] for n in state["saved"]}
    for node in workflow["nodes"]:
        if "widgets_values" in node:
            assert saved.get(node["id"]) == node["widgets_values"], (
                f"{preset}: widget values of {node['type']} #{node['id']} changed on load: "
                f"{node['widgets_values']} -> {saved.get(node['id'])} (widget order or defaults out of step?)"
            )
    for node in state["nodes"]:
        for w in node["widgets"]:
            if w["options"] is not None:
                assert w["value"] in w["options"], (
                    f"{preset}: {node['type']}.{w['name']} = {w['value']!r} is not one of {w['options']}"
                )
    problems = editor.problems_since(mark)
    assert not problems, f"{preset}: console errors/warnings while loading:\n" + "\n".join(problems)

    # -- convert with the frontend, the user's photo and model ----------------------------------------------
    image_name = comfy_server.upload(PHOTO)
    page.evaluate(_SET_WIDGET_JS, {"type": "LoadImage", "name": "image", "value": image_name})
    page.wait_for_timeout(1500)  # the photo appears in Load Image
    page.screenshot(path=str(ARTIFACTS / f"{preset}_with_photo.png"))
    page.evaluate(
        _SET_WIDGET_JS, {"type": "DDColorModelLoader", "name": "model_name", "value": comfy_server.model_name}
    )
    prompt = page.evaluate(_CONVERT_JS)
    expected = _patched_api_twin(preset, comfy_server.model_name, image_name)
    assert _core(prompt) == _core(expected), (
        f"{preset}: the editor's graphToPrompt() differs from workflows/api/{preset}.json:\n"
        f"editor: {json.dumps(_core(prompt), sort_keys=True)}\napi:    {json.dumps(_core(expected), sort_keys=True)}"
    )
    problems = editor.problems_since(mark)
    assert not problems, f"{preset}: console errors/warnings while converting:\n" + "\n".join(problems)

    # -- run it on the server -----------------------------------------------------------------------------
    prompt_id = comfy_server.queue(prompt)
    messages = comfy_server.wait(prompt_id, timeout=600)
    errors = [m["data"] for m in messages if m.get("type") == "execution_error"]
    assert not errors, f"{preset}: execution failed: {errors}"
    entry = comfy_server.history(prompt_id)
    assert entry.get("status", {}).get("status_str") == "success", entry.get("status")

    with Image.open(PHOTO) as photo:
        width, height = photo.size
    by_class = {}
    for node_id, out in entry["outputs"].items():
        by_class.setdefault(prompt[str(node_id)]["class_type"], []).extend(out.get("images", []))
    saved_images = by_class.get("SaveImage", [])
    assert len(saved_images) == 1, f"{preset}: expected one saved image, got {entry['outputs']}"
    info = saved_images[0]
    on_disk = comfy_server.output_dir / info.get("subfolder", "") / info["filename"]
    assert on_disk.is_file(), f"{preset}: {on_disk} was not written"
    colour = comfy_server.view_image(info).astype(np.int16)
    assert colour.shape == (height, width, 3), "the colorized photo must keep the photo's full resolution"
    spread = float(np.abs(colour[..., 0] - colour[..., 1]).mean() + np.abs(colour[..., 1] - colour[..., 2]).mean())
    assert spread > 1.0, f"{preset}: the saved image is still grey (mean channel spread {spread:.2f})"

    compare_nodes = [k for k, v in prompt.items() if v["class_type"] == "DDColorCompare"]
    assert compare_nodes, f"{preset}: no DDColor Compare node"
    previews = [
        img
        for node_id, out in entry["outputs"].items()
        if prompt[str(node_id)]["inputs"].get("images", [None])[0] in compare_nodes
        for img in out.get("images", [])
    ]
    assert previews, f"{preset}: the comparison was not shown: {entry['outputs']}"
    compare = comfy_server.view_image(previews[0])
    mode = prompt[compare_nodes[0]]["inputs"]["mode"]
    assert compare.shape == ((height, 2 * width, 3) if mode == "side_by_side" else (height, width, 3))


# ---------------------------------------------------------------------------------------------- README example
README = REPO_ROOT / "README.md"
_EXAMPLE_MARK = "<!-- http-api-example"


def _readme_api_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert _EXAMPLE_MARK in text, f"README.md lost its {_EXAMPLE_MARK} block"
    block = re.search(r"```python\n(.*?)```", text[text.index(_EXAMPLE_MARK) :], re.S)
    assert block, "no python block after the http-api-example marker"
    return block.group(1)


def test_readme_http_api_example_runs(comfy_server, tmp_path):
    code = _readme_api_example()
    settings = {
        "SERVER": repr(comfy_server.url),
        "PHOTO": f"Path({str(PHOTO)!r})",
        "WORKFLOW": f"Path({str(WORKFLOWS / 'api' / 'ddcolor_portrait.json')!r})",
        "MODEL": repr(comfy_server.model_name),
        "OUT": f"Path({str(tmp_path / 'colorized')!r})",
    }
    for name, value in settings.items():
        code, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, count=1, flags=re.M)
        assert count == 1, f"the README example has no `{name} = ...` line to edit"
    script = tmp_path / "readme_example.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"README example failed:\n{result.stdout}\n{result.stderr}"
    written = sorted((tmp_path / "colorized").glob("*.png"))
    assert len(written) == 2, f"expected the colorized photo and the comparison, got {written}\n{result.stdout}"
    with Image.open(PHOTO) as photo:
        width, height = photo.size
    sizes = sorted(Image.open(path).size for path in written)
    assert sizes == sorted([(width, height), (2 * width, height)]), sizes
    for path in written:
        assert f"saved {path}" in result.stdout


# ================================================================================ the comparer in the graph editor
# Frontends: the one ComfyUI 0.3.75 installs (1.32) always; a newer one when one is installed where
# DDCOLOR_NEW_FRONTEND_ROOT points (a comfyui-frontend-package "static" folder, or a `pip install --target`
# folder holding the package), else ./.cache/frontend-newest: the server then runs with --front-end-root.
def _new_frontend_root() -> Path | None:
    candidates = [os.environ.get("DDCOLOR_NEW_FRONTEND_ROOT"), str(REPO_ROOT / ".cache" / "frontend-newest")]
    for raw in filter(None, candidates):
        for path in (Path(raw), Path(raw) / "static", Path(raw) / "comfyui_frontend_package" / "static"):
            if (path / "index.html").is_file():
                return path
    return None


@pytest.fixture(scope="session")
def newest_frontend_server(tiny_weights):
    root = _new_frontend_root()
    if root is None:
        pytest.skip("no newer frontend installed: pip install --target .cache/frontend-newest --no-deps "
                    "'comfyui-frontend-package==1.58.*' (or set DDCOLOR_NEW_FRONTEND_ROOT)")
    from tests.e2e.server import ComfyServer

    folder = Path(tempfile.mkdtemp(prefix="ddcolor_e2e_fe_"))
    server = ComfyServer(folder, tiny_weights, extra_args=("--front-end-root", str(root)))
    server.frontend_root = root
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["installed", "newest"])
def ui_server(request, comfy_server):
    return comfy_server if request.param == "installed" else request.getfixturevalue("newest_frontend_server")


@pytest.fixture
def ui_editor(browser_context, ui_server):
    yield from _open_editor(browser_context, ui_server)


_FRONTEND_VERSION_JS = "() => (window.__COMFYUI_FRONTEND_VERSION__ || '?')"

_LOAD_JS = "async (workflow) => { await window.app.loadGraphData(workflow); window.app.canvas.setDirty(true, true); }"

# queue a prompt as this tab (its client id), so the tab gets the run's messages, as the Run button does
_QUEUE_JS = """
async ({prompt, workflow}) => {
    const api = window.comfyAPI.api.api;
    const extra = workflow ? {extra_pnginfo: {workflow}} : {};
    const resp = await api.fetchApi("/prompt", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({prompt, client_id: api.clientId, extra_data: extra})});
    const body = await resp.json();
    if (resp.status !== 200) throw new Error(`prompt refused: ${JSON.stringify(body)}`);
    return body.prompt_id;
}
"""

# the wires and node boxes as the editor draws them (canvas units)
_GEOMETRY_JS = """
() => {
    const g = window.app.graph;
    const links = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links || {});
    const pos = (node, input, slot) => {
        if (node.getConnectionPos) return [...node.getConnectionPos(input, slot)];
        return [...(input ? node.getInputPos(slot) : node.getOutputPos(slot))];
    };
    const label = (n) => `${n.type} #${n.id}`;
    return {
        wires: links.filter(Boolean).map((l) => {
            const o = g.getNodeById(l.origin_id), t = g.getNodeById(l.target_id);
            return [`link ${l.id} (${label(o)} -> ${label(t)})`, pos(o, false, l.origin_slot),
                    pos(t, true, l.target_slot), [label(o), label(t)]];
        }),
        boxes: g.nodes.map((n) => {
            const b = n.getBounding ? [...n.getBounding()] : [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30];
            return [label(n), [b[0], b[1], b[0] + b[2], b[1] + b[3]]];
        }),
    };
}
"""

# put node `id` at the top left of the canvas at zoom 1, with room for its comparer
_FOCUS_NODE_JS = """
async (id) => {
    const canvas = window.app.canvas;
    const node = window.app.graph.getNodeById(id);
    canvas.ds.scale = 1;
    canvas.ds.offset[0] = -node.pos[0] + 420;
    canvas.ds.offset[1] = -node.pos[1] + 260;
    canvas.setDirty(true, true);
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
}
"""

_COMPARER_JS = """
(id) => {
    const node = window.app.graph.getNodeById(id);
    const root = node && node.__ddcolorComparer && node.__ddcolorComparer.root;
    if (!root) return null;
    const rect = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
    const output = (window.app.nodeOutputs || {})[String(id)] || null;
    return {
        ...root.dataset, title: root.title, role: root.getAttribute("role"),
        frame: rect(root.querySelector(".ddcolor-cmp-frame")), stage: rect(root.querySelector(".ddcolor-cmp-stage")),
        barVisible: root.querySelector(".ddcolor-cmp-bar").style.display !== "none",
        counter: root.querySelector(".ddcolor-cmp-counter").textContent,
        empty: root.querySelector(".ddcolor-cmp-empty").textContent,
        before: root.querySelector(".ddcolor-cmp-before").src, after: root.querySelector(".ddcolor-cmp-after").src,
        output,
    };
}
"""

_TITLE_POINT_JS = """
(id) => {
    const canvas = window.app.canvas;
    const node = window.app.graph.getNodeById(id);
    const r = canvas.canvas.getBoundingClientRect();
    const s = canvas.ds.scale, o = canvas.ds.offset;
    return [r.left + (node.pos[0] + 60 + o[0]) * s, r.top + (node.pos[1] - 15 + o[1]) * s];
}
"""


def _workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


def _node_id(workflow: dict, node_type: str) -> int:
    (node,) = [n for n in workflow["nodes"] if n["type"] == node_type]
    return node["id"]


def _wait_done(server, prompt_id: str, timeout: float = 600) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.history(prompt_id)
        status = entry.get("status") or {}
        if status.get("completed") or status.get("status_str") in ("success", "error"):
            assert status.get("status_str") == "success", f"the run failed: {status}\n{server.log_tail()}"
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s\n{server.log_tail()}")


def _view(server, url: str) -> np.ndarray:
    """An image the page shows, fetched by its /view URL."""
    query = urlparse(url).query
    resp = server.http.get(f"{server.url}/api/view?{query}", timeout=60)
    assert resp.status_code == 200, f"{url}: HTTP {resp.status_code}"
    import io

    with Image.open(io.BytesIO(resp.content)) as im:
        return np.asarray(im.convert("RGB"))


def _shot(page, rect) -> np.ndarray:
    import io

    left, top, width, height = rect
    png = page.screenshot(clip={"x": left, "y": top, "width": width, "height": height})
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _as_shown(picture: np.ndarray, shape) -> np.ndarray:
    height, width = shape[:2]
    return np.asarray(Image.fromarray(picture).resize((width, height), Image.BILINEAR)).astype(np.int16)


def _region_error(shot, reference, x0: float, x1: float) -> float:
    """Mean absolute colour difference over columns x0..x1 (fractions), below the labels."""
    height, width = shot.shape[:2]
    a, b = int(round(x0 * width)), int(round(x1 * width))
    top = min(height - 1, 26)
    return float(np.abs(shot[top:, a:b] - reference[top:, a:b]).mean())


def _assert_split(page, info, before, after, position: float, context: str) -> None:
    shot = _shot(page, info["frame"])
    want_before, want_after = _as_shown(before, shot.shape), _as_shown(after, shot.shape)
    # kept for a look when a check below fails
    page.screenshot(path=str(ARTIFACTS / "comparer_last_checked.png"))
    margin = 0.03
    if position > 0.1:  # left of the divider: the before image
        left = (0.02, position - margin)
        ok, wrong = _region_error(shot, want_before, *left), _region_error(shot, want_after, *left)
        assert ok < 6 and ok < wrong / 2, f"{context}: left of the divider is not 'before' ({ok:.1f} vs {wrong:.1f})"
    if position < 0.9:  # right of it: the after image
        right = (position + margin, 0.98)
        ok, wrong = _region_error(shot, want_after, *right), _region_error(shot, want_before, *right)
        assert ok < 6 and ok < wrong / 2, f"{context}: right of the divider is not 'after' ({ok:.1f} vs {wrong:.1f})"


def _check_layout_in_editor(page, name: str) -> None:
    from tests.workflow_layout import crossings

    geometry = page.evaluate(_GEOMETRY_JS)
    problems = crossings([(label, p, q, set(own)) for label, p, q, own in geometry["wires"]], geometry["boxes"])
    assert not problems, f"{name}: wires under nodes in the editor:\n" + "\n".join(problems)


def _run_in_tab(editor, prompt: dict, workflow: dict | None = None) -> str:
    return editor.page.evaluate(_QUEUE_JS, {"prompt": prompt, "workflow": workflow})


def _preset_prompt(editor, server, image_name: str) -> dict:
    page = editor.page
    page.evaluate(_SET_WIDGET_JS, {"type": "LoadImage", "name": "image", "value": image_name})
    page.evaluate(_SET_WIDGET_JS, {"type": "DDColorModelLoader", "name": "model_name", "value": server.model_name})
    return page.evaluate(_CONVERT_JS)


def _wait_comparer(page, node_id: int, count: int, timeout: float = 120_000) -> dict:
    page.wait_for_function(
        "([id, count]) => { const n = window.app.graph.getNodeById(id); const r = n && n.__ddcolorComparer;"
        " return r && r.root.dataset.ready === 'true' && r.root.dataset.count === String(count)"
        " && r.afterImg.complete && r.beforeImg.complete; }",
        arg=[node_id, count], timeout=timeout,
    )
    page.wait_for_timeout(300)
    return page.evaluate(_COMPARER_JS, node_id)


@pytest.mark.ui
@pytest.mark.timeout(900)
@pytest.mark.parametrize("preset", PRESETS)
def test_comparer_drag_click_and_keys_after_a_run(ui_editor, ui_server, preset):
    editor, server, page = ui_editor, ui_server, ui_editor.page
    frontend = page.evaluate(_FRONTEND_VERSION_JS)
    tag = "_newest" if hasattr(server, "frontend_root") else ""
    workflow = _workflow(preset)
    compare_id = _node_id(workflow, "DDColorCompare")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    mark = len(editor.console)
    page.evaluate(_LOAD_JS, workflow)
    page.wait_for_timeout(1000)
    _check_layout_in_editor(page, preset)  # the tidy layout, as this frontend draws it
    info = page.evaluate(_COMPARER_JS, compare_id)
    assert info is not None, f"frontend {frontend}: the comparer was not added to DDColor Compare"
    assert info["ready"] == "false" and info["count"] == "0"
    # the extension's widget is not a setting: the saved workflow and the prompt are what they were
    state = page.evaluate(_STATE_JS)
    saved = {n["id"]: n["widgets_values"] for n in state["saved"]}
    assert saved[compare_id] == next(n for n in workflow["nodes"] if n["id"] == compare_id)["widgets_values"]

    prompt = _preset_prompt(editor, server, server.upload(PHOTO))
    assert _core(prompt) == _core(_patched_api_twin(preset, server.model_name, prompt["1"]["inputs"]["image"]))
    _wait_done(server, _run_in_tab(editor, prompt))
    info = _wait_comparer(page, compare_id, 1)
    assert not info["barVisible"], "a single photo needs no photo picker"
    assert info["output"] is None or "images" not in info["output"]
    before, after = _view(server, info["before"]), _view(server, info["after"])
    with Image.open(PHOTO) as photo:
        assert before.shape[:2] == after.shape[:2] == (photo.height, photo.width)
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 3, "before and after must differ for this test"

    page.evaluate(_FOCUS_NODE_JS, compare_id)
    page.wait_for_timeout(500)
    info = page.evaluate(_COMPARER_JS, compare_id)
    left, top, width, height = info["frame"]
    assert width > 150 and height > 150, f"the comparer is too small to use: {info['frame']}"
    page.screenshot(path=str(ARTIFACTS / f"{preset}_after_run{tag}.png"))

    # drag the divider to 30 %: before on its left, after on its right
    y = top + height * 0.6
    page.mouse.move(left + width * 0.5, y)
    page.mouse.down()
    page.mouse.move(left + width * 0.4, y, steps=4)
    page.mouse.move(left + width * 0.3, y, steps=4)
    page.mouse.up()
    info = page.evaluate(_COMPARER_JS, compare_id)
    assert info["show"] == "split" and abs(float(info["position"]) - 0.3) < 0.02, info
    _assert_split(page, info, before, after, 0.3, f"{preset} ({frontend}) after dragging to 30%")
    page.mouse.move(left + width * 0.3, y)
    page.mouse.down()
    page.mouse.move(left + width * 0.8, y, steps=6)
    page.mouse.up()
    info = page.evaluate(_COMPARER_JS, compare_id)
    assert abs(float(info["position"]) - 0.8) < 0.02, info
    _assert_split(page, info, before, after, 0.8, f"{preset} ({frontend}) after dragging to 80%")

    # click: the whole before, click again: the whole after
    page.mouse.click(left + width * 0.5, y)
    info = page.evaluate(_COMPARER_JS, compare_id)
    assert info["show"] == "before", info
    _assert_split(page, info, before, after, 1.0, f"{preset} ({frontend}) after one click")
    page.mouse.click(left + width * 0.5, y)
    info = page.evaluate(_COMPARER_JS, compare_id)
    assert info["show"] == "after", info
    _assert_split(page, info, before, after, 0.0, f"{preset} ({frontend}) after two clicks")

    # keys: with the comparer focused (it was clicked), and with only the node selected on the canvas
    page.keyboard.press("Home")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("ArrowRight")
    info = page.evaluate(_COMPARER_JS, compare_id)
    assert info["show"] == "split" and abs(float(info["position"]) - 0.11) < 1e-6, info
    page.mouse.click(*page.evaluate(_TITLE_POINT_JS, compare_id))  # select the node by its title
    assert page.evaluate("(id) => !!window.app.canvas.selected_nodes[id]", compare_id)
    for _ in range(4):
        page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("ArrowLeft")
    page.mouse.move(5, 5)  # away from the title: its tooltip would cover the picture
    page.wait_for_timeout(500)
    info = page.evaluate(_COMPARER_JS, compare_id)
    assert abs(float(info["position"]) - 0.5) < 1e-6, info
    _assert_split(page, info, before, after, 0.5, f"{preset} ({frontend}) after the arrow keys")
    assert info["role"] == "slider" and "Drag" in info["title"] and "←" in info["title"], info["title"]
    left, top, width, height = page.evaluate(_COMPARER_JS, compare_id)["stage"]
    page.screenshot(path=str(ARTIFACTS / f"comparer_{preset}{tag}.png"),
                    clip={"x": left - 20, "y": top - 150, "width": width + 40, "height": height + 190})
    problems = editor.problems_since(mark, ours_only=bool(tag))
    assert not problems, f"{preset} ({frontend}): console errors/warnings:\n" + "\n".join(problems)


def _second_photo(tmp_path: Path, size=(384, 512), name="second.png") -> Path:
    """A photo unlike the first: the astronaut mirrored and cropped to another shape, in grey."""
    with Image.open(PHOTO) as photo:
        grey = photo.convert("L").transpose(Image.FLIP_LEFT_RIGHT).resize(size, Image.BILINEAR)
    path = tmp_path / name
    grey.save(path)
    return path


def _gradient(tmp_path: Path, width: int, height: int, name: str) -> Path:
    ramp = np.linspace(0, 255, max(width, height), dtype=np.float32)
    values = ramp[None, :width] if width >= height else ramp[:height, None]
    picture = np.broadcast_to(values, (height, width)).astype(np.uint8)
    path = tmp_path / name
    Image.fromarray(picture, "L").save(path)
    return path


_RECORD_JS = """
() => {
    const api = window.comfyAPI.api.api;
    const log = (window.__ddcolorLog = {previews: [], progress: [], executed: []});
    api.addEventListener("b_preview_with_metadata", (e) =>
        log.previews.push({node: String(e.detail.displayNodeId ?? e.detail.nodeId), t: performance.now()}));
    api.addEventListener("b_preview", () => log.previews.push({node: null, t: performance.now()}));
    api.addEventListener("progress", (e) => log.progress.push(
        {node: String(e.detail.node), value: e.detail.value, max: e.detail.max, t: performance.now()}));
    api.addEventListener("executed", (e) => log.executed.push({node: String(e.detail.node), t: performance.now()}));
}
"""


@pytest.mark.ui
@pytest.mark.timeout(900)
def test_comparer_steps_through_a_batch_and_colorize_shows_live_previews(ui_editor, ui_server, tmp_path):
    editor, server, page = ui_editor, ui_server, ui_editor.page
    tag = "_newest" if hasattr(server, "frontend_root") else ""
    workflow = _workflow("ddcolor_portrait")
    compare_id, colorize_id = _node_id(workflow, "DDColorCompare"), _node_id(workflow, "DDColorColorize")
    mark = len(editor.console)
    page.evaluate(_LOAD_JS, workflow)
    page.evaluate(_RECORD_JS)
    prompt = _preset_prompt(editor, server, server.upload(PHOTO))
    load = str(_node_id(workflow, "LoadImage"))

    # -- a batch of 2 different photos: ‹ › and the Up/Down keys pick the photo ------------------------------
    batch = json.loads(json.dumps(prompt))
    batch["20"] = {"class_type": "LoadImage", "inputs": {"image": server.upload(_second_photo(tmp_path))}}
    batch["21"] = {"class_type": "ImageBatch", "inputs": {"image1": [load, 0], "image2": ["20", 0]}}
    for node in batch.values():
        for name, value in node["inputs"].items():
            if value == [load, 0] and node["class_type"] != "ImageBatch":
                node["inputs"][name] = ["21", 0]
    _wait_done(server, _run_in_tab(editor, batch))
    info = _wait_comparer(page, compare_id, 2)
    assert info["barVisible"] and info["index"] == "0" and info["counter"].endswith("1 / 2"), info
    first = (_view(server, info["before"]), _view(server, info["after"]))
    page.evaluate(_FOCUS_NODE_JS, compare_id)
    page.wait_for_timeout(400)
    page.locator(".ddcolor-cmp-next").click()
    info = _wait_comparer(page, compare_id, 2)
    assert info["index"] == "1" and info["counter"].endswith("2 / 2"), info
    second = (_view(server, info["before"]), _view(server, info["after"]))
    assert np.abs(first[0].astype(int) - second[0].astype(int)).mean() > 10, "photo 2 is not another picture"
    _assert_split(page, info, *second, 0.5, "photo 2 of the batch")
    page.screenshot(path=str(ARTIFACTS / f"comparer_batch{tag}.png"))
    page.keyboard.press("ArrowDown")  # the comparer has focus after the click: next wraps round to photo 1
    info = _wait_comparer(page, compare_id, 2)
    assert info["index"] == "0", info
    _assert_split(page, info, *first, 0.5, "back to photo 1 of the batch")

    # -- 4 photos, one at a time: the Colorize node shows the latest finished photo while the bar moves ---------
    four = json.loads(json.dumps(prompt))
    four["22"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [load, 0], "amount": 4}}
    for node in four.values():
        for name, value in node["inputs"].items():
            if value == [load, 0] and node["class_type"] != "RepeatImageBatch":
                node["inputs"][name] = ["22", 0]
    four[str(colorize_id)]["inputs"]["batch_size"] = 1
    page.evaluate("() => { const log = window.__ddcolorLog; log.previews.length = log.progress.length = 0;"
                  " log.executed.length = 0; }")
    _wait_done(server, _run_in_tab(editor, four))
    _wait_comparer(page, compare_id, 4)
    log = page.evaluate("() => window.__ddcolorLog")
    steps = [p["value"] for p in log["progress"] if p["node"] == str(colorize_id)]
    assert steps == [1, 2, 3, 4], log["progress"]
    # a frontend that reads the node id from the message also fires the plain event for the same picture
    tagged = [p for p in log["previews"] if p["node"] is not None]
    ours = [p for p in tagged if p["node"] == str(colorize_id)] if tagged else log["previews"]
    assert 1 <= len(ours) <= 4, log["previews"]
    done = min(e["t"] for e in log["executed"] if e["node"] == str(compare_id))
    assert ours[0]["t"] < done, "the live preview came only after the run"
    shown = page.evaluate(
        "(id) => { const n = window.app.graph.getNodeById(id); const p = window.app.nodePreviewImages || {};"
        " return (n.imgs && n.imgs.length)"
        " || Object.keys(p).filter((k) => k === String(id) || k.endsWith(':' + id)).length; }",
        colorize_id,
    )
    assert shown, "the Colorize node shows no preview"
    page.evaluate(_FOCUS_NODE_JS, colorize_id)
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / f"live_preview{tag}.png"))
    problems = editor.problems_since(mark, ours_only=bool(tag))
    assert not problems, "console errors/warnings:\n" + "\n".join(problems)


@pytest.mark.ui
@pytest.mark.timeout(900)
def test_comparer_bad_input(editor, comfy_server, tmp_path):
    """Different sizes, very tall/wide photos, an old workflow, a reload mid-run: no console error, no breakage."""
    page, server = editor.page, comfy_server
    mark = len(editor.console)

    # -- a workflow saved before the comparer existed loads unchanged and converts to the same prompt -----------
    old = json.loads((Path(__file__).parent / "data" / "ddcolor_portrait_before_comparer.json").read_text("utf-8"))
    page.evaluate(_LOAD_JS, old)
    page.wait_for_timeout(1000)
    state = page.evaluate(_STATE_JS)
    saved = {n["id"]: n["widgets_values"] for n in state["saved"]}
    assert saved == {n["id"]: n.get("widgets_values") for n in old["nodes"]}
    links = page.evaluate("() => window.app.graph.serialize().links")
    assert sorted(map(tuple, links)) == sorted(map(tuple, old["links"]))
    positions = page.evaluate("() => window.app.graph.serialize().nodes.map((n) => [n.id, n.pos])")
    assert {i: list(p) for i, p in positions} == {n["id"]: n["pos"] for n in old["nodes"]}
    compare_id = _node_id(old, "DDColorCompare")
    assert page.evaluate(_COMPARER_JS, compare_id)["count"] == "0"
    prompt = _preset_prompt(editor, server, server.upload(PHOTO))
    assert _core(prompt) == _core(_patched_api_twin("ddcolor_portrait", server.model_name,
                                                    prompt["1"]["inputs"]["image"]))
    load = str(_node_id(old, "LoadImage"))
    _wait_done(server, _run_in_tab(editor, prompt))
    _wait_comparer(page, compare_id, 1)

    # -- before and after of different sizes: before is resized to after's size (stretched, not letterboxed) ----
    odd = json.loads(json.dumps(prompt))
    odd["20"] = {"class_type": "LoadImage", "inputs": {"image": server.upload(_second_photo(tmp_path, (300, 500)))}}
    odd[str(compare_id)]["inputs"]["before"] = ["20", 0]
    _wait_done(server, _run_in_tab(editor, odd))
    info = _wait_comparer(page, compare_id, 1)
    before, after = _view(server, info["before"]), _view(server, info["after"])
    assert before.shape == after.shape == (512, 512, 3)
    with Image.open(tmp_path / "second.png") as second:
        stretched = np.asarray(second.convert("RGB").resize((512, 512), Image.BILINEAR)).astype(int)
    assert np.abs(before.astype(int) - stretched).mean() < 4, "before is not the other photo resized to after's size"
    page.evaluate(_FOCUS_NODE_JS, compare_id)
    page.wait_for_timeout(400)
    info = page.evaluate(_COMPARER_JS, compare_id)
    assert abs(info["frame"][2] - info["frame"][3]) <= 2, info["frame"]  # after's shape (square)
    _assert_split(page, info, before, after, 0.5, "different sizes")
    page.screenshot(path=str(ARTIFACTS / "comparer_different_sizes.png"))

    # -- very tall and very wide photos: letterboxed inside the node, whole picture visible ------------------
    for width, height in ((48, 1536), (1536, 48)):
        name = server.upload(_gradient(tmp_path, width, height, f"gradient_{width}x{height}.png"))
        extreme = json.loads(json.dumps(prompt))
        extreme[load]["inputs"]["image"] = name
        _wait_done(server, _run_in_tab(editor, extreme))
        page.wait_for_function(
            "([id, w]) => { const r = window.app.graph.getNodeById(id).__ddcolorComparer;"
            " return r.root.dataset.ready === 'true' && r.afterImg.naturalWidth === w; }",
            arg=[compare_id, width], timeout=120_000,
        )
        page.wait_for_timeout(300)
        info = page.evaluate(_COMPARER_JS, compare_id)
        fl, ft, fw, fh = info["frame"]
        sl, st, sw, sh = info["stage"]
        assert fl >= sl - 1 and ft >= st - 1 and fl + fw <= sl + sw + 1 and ft + fh <= st + sh + 1, info
        assert abs(fw / fh - width / height) / (width / height) < 0.15 or min(fw, fh) <= 2, info
        assert max(fw / sw, fh / sh) > 0.97, f"the picture does not fill the node's long side: {info}"
        page.screenshot(path=str(ARTIFACTS / f"comparer_{width}x{height}.png"))

    # -- the page reloaded in the middle of a run -----------------------------------------------------------
    long_run = json.loads(json.dumps(prompt))
    long_run["22"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [load, 0], "amount": 6}}
    for node in long_run.values():
        for key, value in node["inputs"].items():
            if value == [load, 0] and node["class_type"] != "RepeatImageBatch":
                node["inputs"][key] = ["22", 0]
    colorize = str(_node_id(old, "DDColorColorize"))
    long_run[colorize]["inputs"]["batch_size"] = 1
    page.evaluate(_RECORD_JS)
    prompt_id = _run_in_tab(editor, long_run)
    page.wait_for_function("() => window.__ddcolorLog.progress.length > 0", timeout=120_000)
    page.reload(wait_until="domcontentloaded")
    page.wait_for_function(
        "() => window.app && window.app.graph && window.app.canvas && window.app.vueAppReady", timeout=120_000
    )
    _wait_done(server, prompt_id)
    page.wait_for_timeout(1500)
    restored = page.evaluate("() => window.app.graph.nodes.filter((n) => n.type === 'DDColorCompare').map((n) => n.id)")
    assert restored, "the workflow was not restored after the reload"
    # the same prompt as the first run: ComfyUI serves it from its cache, the fresh page still gets the pictures
    prompt_again = _preset_prompt(editor, server, prompt["1"]["inputs"]["image"])
    assert _core(prompt_again) == _core(prompt)
    _wait_done(server, _run_in_tab(editor, prompt_again))
    _wait_comparer(page, restored[0], 1)
    # a reload starts the editor again: what it logged when the tab first opened (before this test, without
    # any run) is the editor's own start-up noise; anything else fails
    startup = {line.splitlines()[0] for line in editor.problems_since(0, stop=mark)}
    problems = [p for p in editor.problems_since(mark) if p.splitlines()[0] not in startup]
    assert not problems, "console errors/warnings:\n" + "\n".join(problems)


@pytest.mark.ui
@pytest.mark.timeout(600)
def test_comparer_tooltip_follows_the_language_setting(browser_context, comfy_server):
    """With ComfyUI's language set to Chinese, the comparer's tooltip and hint come from locales/zh."""
    zh = json.loads((REPO_ROOT / "locales" / "zh" / "main.json").read_text(encoding="utf-8"))["ddcolorCompare"]
    url = f"{comfy_server.url}/api/settings/Comfy.Locale"
    assert comfy_server.http.post(url, json="zh", timeout=30).status_code == 200
    editor = EditorPage(browser_context, comfy_server)
    try:
        editor.open()
        mark = len(editor.console)
        workflow = _workflow("ddcolor_portrait")
        editor.page.evaluate(_LOAD_JS, workflow)
        compare_id = _node_id(workflow, "DDColorCompare")
        editor.page.wait_for_function(
            "([id, text]) => window.app.graph.getNodeById(id).__ddcolorComparer.root.title === text",
            arg=[compare_id, zh["tooltip"]], timeout=30_000,
        )
        info = editor.page.evaluate(_COMPARER_JS, compare_id)
        assert info["empty"] == zh["empty"], info
        problems = editor.problems_since(mark)
        assert not problems, "console errors/warnings:\n" + "\n".join(problems)
    finally:
        editor.page.close()
        comfy_server.http.post(url, json="en", timeout=30)


@pytest.mark.ui
@pytest.mark.timeout(600)
def test_no_wire_runs_under_a_node_as_the_editor_draws_it(editor):
    """Every UI workflow in workflows/ (presets added later included), with the slot positions the editor uses."""
    mark = len(editor.console)
    for path in sorted(WORKFLOWS.glob("*.json")):
        workflow = json.loads(path.read_text(encoding="utf-8"))
        editor.page.evaluate(_LOAD_JS, workflow)
        editor.page.wait_for_timeout(800)
        _check_layout_in_editor(editor.page, path.stem)
        editor.page.evaluate(_FIT_VIEW_JS)
        editor.page.wait_for_timeout(400)
        editor.page.screenshot(path=str(ARTIFACTS / f"layout_{path.stem}.png"))
    # a preset's placeholder input (the video preset's example.mp4) is not on this server: not a layout matter
    problems = [p for p in editor.problems_since(mark) if "/api/view?type=input&" not in p]
    assert not problems, "console errors/warnings:\n" + "\n".join(problems)
