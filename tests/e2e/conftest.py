"""The ``comfy_server`` fixture: one real ComfyUI server per test session, with this pack installed.

Interface (used by every ``tests/e2e`` module): ``.url``, ``.port``, ``.pid``, ``.base_dir``, ``.input_dir``,
``.output_dir``, ``.models_dir`` (``base_dir/models/ddcolor``), ``.log_path``, ``.model_name`` (the synthetic tiny
weights placed in ``models_dir``), ``.rss_bytes()``, ``.queue(prompt) -> prompt_id``, ``.wait(prompt_id,
timeout) -> [ws messages]``, ``.history(prompt_id)``, ``.upload(path) -> name``, ``.view_image(file_info) ->
uint8 HxWx3``, ``.restart()``; see ``tests/e2e/server.py`` for the rest (``run``, ``wait_for``, ``messages``,
``interrupt``, ``object_info``, ``post_prompt``, ``output_images``, ``log_text``).

The server log is always copied to ``artifacts/e2e/comfyui_server.log``; when a test failed, the whole
temporary ComfyUI folder is kept too and its path printed. ``DDCOLOR_E2E_KEEP=1`` keeps it always.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.server import REPO_ROOT, ComfyServer, find_comfyui_source

ARTIFACTS = REPO_ROOT / "artifacts" / "e2e"
_E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def comfy_server(request, tiny_weights):
    try:
        source = find_comfyui_source()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    root = Path(tempfile.mkdtemp(prefix="ddcolor_e2e_"))
    server = ComfyServer(root, tiny_weights, comfyui_src=source)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if server.log_path.exists():
            shutil.copyfile(server.log_path, ARTIFACTS / "comfyui_server.log")
        failed = request.session.testsfailed > 0
        if failed or os.environ.get("DDCOLOR_E2E_KEEP"):
            sys.stderr.write(
                f"\n[e2e] ComfyUI folder kept at {root}; server log copied to {ARTIFACTS / 'comfyui_server.log'}\n"
            )
        else:
            shutil.rmtree(root, ignore_errors=True)
