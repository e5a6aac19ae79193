"""Load DDColor Model: weights from ``models/ddcolor`` (official ones downloaded on first use)."""

from __future__ import annotations

import logging
import os
import pickle
import re

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..ddcolor import hub
from ..ddcolor.errors import CheckpointError, DDColorError
from ..ddcolor.loading import resolve_weights_file
from ._comfy import CATEGORY, DDColorModel, progress_bar, schema
from ._validate import check_choice, verdict

logger = logging.getLogger("ComfyUI-DDColor")

FOLDER = "ddcolor"
EXTENSIONS = frozenset({".pth", ".pt", ".bin", ".safetensors"})
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""Weights file names of a Hugging Face style folder (next to a ``config.json``)."""
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_model_dir() -> str:
    return os.path.join(folder_paths.models_dir, FOLDER)


def register_model_folder() -> None:
    """Make ``ddcolor`` a ComfyUI model folder without losing paths from ``extra_model_paths.yaml``.

    Paths that are already registered (e.g. ``ddcolor: D:/models/ddcolor`` in extra_model_paths.yaml, which
    ComfyUI reads before custom nodes) are kept first; ``models/ddcolor`` is appended.
    """
    default = default_model_dir()
    try:
        os.makedirs(default, exist_ok=True)  # so users find where to put weights
    except OSError:
        logger.debug("DDColor: cannot create %s (read-only install?)", default)
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(EXTENSIONS))
    else:
        paths, extensions = entry
        if default not in paths:
            paths.append(default)
        merged = set(extensions) | EXTENSIONS if extensions else set(EXTENSIONS)
        folder_paths.folder_names_and_paths[FOLDER] = (paths, merged)
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(FOLDER, None)


def model_dirs() -> list[str]:
    if FOLDER not in folder_paths.folder_names_and_paths:
        register_model_folder()
    return list(folder_paths.get_folder_paths(FOLDER))


def _is_hf_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, f)) for f in HF_WEIGHT_FILES
    )


def list_models() -> list[str]:
    """What the ``model_name`` combo offers: weight files, Hugging Face style folders, then the official names.

    A folder holding ``config.json`` + ``pytorch_model.bin``/``model.safetensors`` is listed once, by its
    folder name. Official checkpoints that are not on disk yet are listed too and downloaded when chosen.
    """
    dirs = model_dirs()
    names: list[str] = []
    hf_seen: set[str] = set()
    for rel in folder_paths.get_filename_list(FOLDER):
        parts = re.split(r"[\\/]", rel)
        if hub.STAGING_DIRNAME in parts:
            continue
        if len(parts) > 1 and parts[-1] in HF_WEIGHT_FILES:
            folder = os.path.dirname(rel)
            if any(_is_hf_folder(os.path.join(base, folder)) for base in dirs):
                if folder not in hf_seen:
                    hf_seen.add(folder)
                    names.append(folder)
                continue
        names.append(rel)
    names.extend(name for name in hub.OFFICIAL_MODELS if name not in names)
    return names


def check_model_name(model_name: str) -> str | None:
    """``None`` if ``model_name`` may be looked up, else why not (path tricks are refused)."""
    if not isinstance(model_name, str):
        return (f"model_name must be the name of a weights file or folder (text), not {model_name!r} "
                f"({type(model_name).__name__}): choose a model from the list (files in models/ddcolor).")
    if not model_name.strip():
        return "model_name is empty: choose a model from the list (files in models/ddcolor)."
    parts = re.split(r"[\\/]", model_name)
    if (
        "\x00" in model_name
        or os.path.isabs(model_name)
        or model_name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", model_name)
        or ".." in parts
    ):
        return (
            f"model_name {model_name!r} is not allowed: it must be a file or folder name inside the ddcolor "
            f"models folder ({', '.join(model_dirs())}), without '..' or an absolute path. "
            "Copy the weights into that folder and choose them from the list."
        )
    return None


def model_name_problem(model_name: object) -> str | None:
    """``None`` if ``model_name`` can be loaded (or downloaded), else why not: what ``POST /prompt`` answers."""
    problem = check_model_name(model_name)
    if problem or model_name in list_models():
        return problem
    for base in model_dirs():
        candidate = os.path.join(base, model_name)
        if os.path.isdir(candidate):  # a folder that is not listed: it lacks config.json or the weights
            try:
                resolve_weights_file(candidate)
            except CheckpointError as exc:
                return str(exc)
            return None  # weights present (config.json missing): the loader says what it finds
        if os.path.isfile(candidate):
            return (f"model_name {model_name!r} is not a weights file: DDColor weights end in "
                    f"{', '.join(sorted(EXTENSIONS))}, or are a Hugging Face folder with config.json.")
    return (
        f"model_name {model_name!r} was not found in {', '.join(model_dirs())}. Put the weights there "
        "and refresh ComfyUI (press R), or choose a model from the list."
    )


def resolve_model_path(model_name: str, progress=None) -> str:
    """Full path of the weights for ``model_name``; downloads an official checkpoint that is missing.

    Raises:
        CheckpointError: refused name, file not found (and not official), or the download failed.
    """
    problem = check_model_name(model_name)
    if problem:
        raise CheckpointError(problem)
    dirs = model_dirs()
    for base in dirs:
        candidate = os.path.normpath(os.path.join(base, model_name))
        if not candidate.startswith(os.path.normpath(base)):
            continue
        if os.path.isfile(candidate):
            return candidate
        if os.path.isdir(candidate):
            return candidate  # Hugging Face layout; ddcolor.load_model checks config.json and the weights
    if model_name in hub.OFFICIAL_MODELS:
        dest = next((d for d in dirs if os.path.isdir(d) and os.access(d, os.W_OK)), None) or default_model_dir()
        return str(hub.download_official(model_name, dest, progress=progress))
    raise CheckpointError(
        f"model_name {model_name!r} was not found in {', '.join(dirs)}. Put the weights file there and refresh "
        f"ComfyUI (press R), or pick one of the official models ({', '.join(hub.OFFICIAL_MODELS)}), which are "
        "downloaded automatically."
    )


def choose_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Weights dtype: ``auto`` is fp32 on the CPU and bf16 where ComfyUI considers bf16 fast, else fp32."""
    if precision not in PRECISIONS:
        raise DDColorError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}.")
    cpu = mm.is_device_cpu(device)
    if precision == "auto":
        if cpu:
            return torch.float32
        return torch.bfloat16 if mm.should_use_bf16(device, prioritize_performance=True) else torch.float32
    if precision == "fp16" and cpu:
        logger.warning("DDColor: fp16 is slow or unsupported on the CPU; loading the model in fp32 instead.")
        return torch.float32
    return _DTYPES[precision]


def _load_network(path: str, dtype: torch.dtype):
    from .. import ddcolor

    try:
        return ddcolor.load_model(path, device="cpu", dtype=dtype)
    except DDColorError:
        raise
    except (RuntimeError, OSError, EOFError, KeyError, IndexError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} could not be read as DDColor weights ({type(exc).__name__}: {first}). The file is probably "
            "truncated or corrupt: delete it and download it again (official files: "
            f"https://huggingface.co/{hub.HF_REPO})."
        ) from exc


class DDColorModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DDColorModelLoader",
            display_name="Load DDColor Model",
            category=CATEGORY,
            search_aliases=["ddcolor", "colorize", "colorization", "black and white", "old photo", "上色"],
            description=(
                "Loads DDColor colorization weights from models/ddcolor (.pth, .pt, .bin, .safetensors, or a "
                "Hugging Face folder with config.json). The four official models are downloaded from "
                "huggingface.co/piddnad/DDColor-models the first time you pick one (set HF_ENDPOINT="
                "https://hf-mirror.com if huggingface.co is blocked). ComfyUI's memory manager owns the model "
                "and can move it off the GPU when other models need the space."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=list_models(),
                    tooltip=(
                        "Weights in models/ddcolor. ddcolor_modelscope.pth: most natural colours (recommended); "
                        "ddcolor_artistic.pth: more vivid; ddcolor_paper.pth: the paper model; "
                        "ddcolor_paper_tiny.pth: small and fast (CPU / low VRAM). Missing official files are "
                        "downloaded on first use."
                    ),
                ),
                io.Combo.Input(
                    "precision",
                    options=list(PRECISIONS),
                    default="auto",
                    tooltip=(
                        "Weights precision. auto: fp32 on the CPU, bf16 on GPUs that run it fast, else fp32. "
                        "fp32 matches the official results exactly; fp16/bf16 halve the VRAM."
                    ),
                ),
                io.Combo.Input(
                    "device",
                    options=list(DEVICES),
                    default="auto",
                    tooltip="auto: the GPU ComfyUI uses (CPU if there is none). cpu: always run on the CPU.",
                ),
            ],
            outputs=[
                DDColorModel.Output(
                    "model", display_name="model", tooltip="The DDColor model, for DDColor Colorize (Lab)."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, precision=None, device=None) -> bool | str:
        return verdict(None if model_name is None else model_name_problem(model_name),
                       check_choice("precision", precision, PRECISIONS), check_choice("device", device, DEVICES))

    @classmethod
    def execute(cls, model_name: str, precision: str = "auto", device: str = "auto") -> io.NodeOutput:
        if device not in DEVICES:
            raise DDColorError(f"device {device!r} is unknown; choose one of {', '.join(DEVICES)}.")
        if device == "cpu":
            load_device = offload_device = torch.device("cpu")
        else:
            load_device = mm.get_torch_device()
            offload_device = mm.unet_offload_device()
        dtype = choose_dtype(precision, load_device)

        bar = None

        def on_download(done: int, total: int | None) -> None:
            nonlocal bar
            if total:
                if bar is None:
                    bar = progress_bar(total)
                bar.update_absolute(done, total)

        path = resolve_model_path(model_name, progress=on_download)
        net = _load_network(path, dtype)
        net.eval()
        patcher = comfy.model_patcher.ModelPatcher(net, load_device=load_device, offload_device=offload_device)
        logger.debug("DDColor: loaded %s (%s, %s) for %s", path, getattr(getattr(net, "config", None), "variant",
                    "?"), str(dtype).replace("torch.", ""), load_device)
        return io.NodeOutput(patcher)
