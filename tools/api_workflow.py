"""API-format workflows: load, check, and patch one for a single image of a batch.

An API-format workflow (ComfyUI's "Export (API)") maps node ids to ``{"class_type", "inputs"}``; a link is an
input whose value is ``[source_node_id, output_index]``. Nodes are found by ``class_type``, never by id, so any
workflow built around the DDColor nodes works, not only the shipped presets.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

LOAD_IMAGE = "LoadImage"
OUTPUT_CLASSES = ("SaveImage", "PreviewImage")
LOADER = "DDColorModelLoader"
RESIZE = "DDColorResizeByPreset"
COMPARE = "DDColorCompare"

PRESET_FILES = {
    "portrait": "ddcolor_portrait.json",
    "building": "ddcolor_building.json",
}
PRESET_DIR = Path(__file__).resolve().parent.parent / "workflows" / "api"


class WorkflowError(ValueError):
    """The workflow cannot be used by the batch tool (the message names the file and what to change)."""


def _is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def load_workflow(path: Path) -> dict:
    """Read an API-format workflow; UI-format files and broken JSON raise :class:`WorkflowError`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise WorkflowError(f"workflow {path} is not valid JSON ({exc}); export it again from ComfyUI") from exc
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(
            f"workflow {path} is in the UI format (from 'Save'); the batch tool needs the API format: in ComfyUI "
            f"use Workflow > Export (API), or start from workflows/api/ddcolor_portrait.json"
        )
    if not isinstance(data, dict) or not data:
        raise WorkflowError(f"workflow {path} is empty or not an API-format workflow (a JSON object of nodes)")
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            raise WorkflowError(
                f"workflow {path}: node {node_id!r} has no class_type/inputs; is this an API-format workflow?"
            )
    return data


def preset_path(name: str) -> Path:
    return PRESET_DIR / PRESET_FILES[name]


@dataclass(frozen=True)
class WorkflowInfo:
    load_id: str
    result_id: str  # the output node whose image is the colorized photo
    compare_id: str | None  # the DDColorCompare node, if any
    compare_out_id: str | None  # an output node showing the comparison, if any
    loader_ids: tuple[str, ...]
    resize_ids: tuple[str, ...]


def _ids(workflow: dict, class_type: str) -> list[str]:
    return sorted((nid for nid, n in workflow.items() if n["class_type"] == class_type), key=_id_key)


def _id_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _source(workflow: dict, node_id: str, input_name: str = "images") -> str | None:
    value = workflow[node_id]["inputs"].get(input_name)
    return value[0] if _is_link(value) else None


def analyse(workflow: dict, name: str = "workflow") -> WorkflowInfo:
    """Find the nodes the batch tool patches; raise :class:`WorkflowError` saying what is missing."""
    loads = _ids(workflow, LOAD_IMAGE)
    if len(loads) != 1:
        raise WorkflowError(
            f"{name} has {len(loads)} LoadImage nodes; the batch tool feeds each photo into exactly one, "
            f"so keep a single LoadImage node"
        )
    compare_ids = _ids(workflow, COMPARE)
    outputs = [nid for cls in OUTPUT_CLASSES for nid in _ids(workflow, cls)]
    compare_outs = [nid for nid in outputs if _source(workflow, nid) in compare_ids]
    results = [nid for nid in outputs if nid not in compare_outs and _source(workflow, nid) is not None]
    if not results:
        raise WorkflowError(
            f"{name} has no SaveImage or PreviewImage node showing the colorized image; add a SaveImage node "
            f"after DDColor Merge L + ab"
        )
    saves = [nid for nid in results if workflow[nid]["class_type"] == "SaveImage"]
    result_id = (saves or results)[0]
    return WorkflowInfo(
        load_id=loads[0],
        result_id=result_id,
        compare_id=compare_ids[0] if compare_ids else None,
        compare_out_id=next((nid for nid in compare_outs if _source(workflow, nid) == compare_ids[0]), None)
        if compare_ids
        else None,
        loader_ids=tuple(_ids(workflow, LOADER)),
        resize_ids=tuple(_ids(workflow, RESIZE)),
    )


def _ancestors(workflow: dict, roots: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        nid = stack.pop()
        if nid in seen or nid not in workflow:
            continue
        seen.add(nid)
        stack.extend(v[0] for v in workflow[nid]["inputs"].values() if _is_link(v))
    return seen


def _new_id(workflow: dict) -> str:
    numeric = [int(n) for n in workflow if n.isdigit()]
    return str(max(numeric, default=0) + 1)


@dataclass(frozen=True)
class Settings:
    """What the command line changes in the workflow (``None`` keeps the workflow's value)."""

    model: str | None = None
    precision: str | None = None
    device: str | None = None
    input_size: int | None = None
    compare: bool = False
    overrides: tuple[tuple[str, str, object], ...] = ()  # (class_type or node id, input name, value)


def apply_settings(workflow: dict, settings: Settings, name: str = "workflow") -> tuple[dict, WorkflowInfo]:
    """The workflow with ``settings`` applied and only the nodes needed for the result (and comparison).

    Extra output nodes are dropped, so the server computes only what is downloaded. With ``compare`` a
    PreviewImage is attached to DDColorCompare if the workflow has none.
    """
    wf = copy.deepcopy(workflow)
    info = analyse(wf, name)
    if settings.model is not None or settings.precision is not None or settings.device is not None:
        if not info.loader_ids:
            raise WorkflowError(f"{name} has no DDColorModelLoader node, so --model/--precision/--device do not apply")
        for nid in info.loader_ids:
            inputs = wf[nid]["inputs"]
            for key, value in (("model_name", settings.model), ("precision", settings.precision),
                               ("device", settings.device)):
                if value is not None:
                    inputs[key] = value
    if settings.input_size is not None:
        if not info.resize_ids:
            raise WorkflowError(f"{name} has no DDColorResizeByPreset node, so --input-size does not apply")
        for nid in info.resize_ids:
            wf[nid]["inputs"]["preset"] = "custom"
            wf[nid]["inputs"]["custom_size"] = settings.input_size
    for target, key, value in settings.overrides:
        matched = [nid for nid, n in wf.items() if nid == target or n["class_type"] == target]
        if not matched:
            raise WorkflowError(f"--set {target}.{key}: {name} has no node with class_type or id {target!r}")
        for nid in matched:
            if _is_link(wf[nid]["inputs"].get(key)):
                raise WorkflowError(f"--set {target}.{key}: that input is connected to another node in {name}")
            wf[nid]["inputs"][key] = value
    keep = [info.result_id]
    compare_out = info.compare_out_id
    if settings.compare:
        if info.compare_id is None:
            raise WorkflowError(f"{name} has no DDColorCompare node; drop --compare or add the node to the workflow")
        if compare_out is None:
            compare_out = _new_id(wf)
            wf[compare_out] = {"class_type": "PreviewImage", "inputs": {"images": [info.compare_id, 0]}}
        keep.append(compare_out)
    else:
        compare_out = None
    needed = _ancestors(wf, keep)
    wf = {nid: node for nid, node in wf.items() if nid in needed}
    info = WorkflowInfo(
        load_id=info.load_id,
        result_id=info.result_id,
        compare_id=info.compare_id if settings.compare else None,
        compare_out_id=compare_out,
        loader_ids=tuple(n for n in info.loader_ids if n in needed),
        resize_ids=tuple(n for n in info.resize_ids if n in needed),
    )
    if info.load_id not in needed:
        raise WorkflowError(
            f"{name}: the LoadImage node does not feed the saved image, so every photo would be ignored"
        )
    return wf, info


def for_image(workflow: dict, info: WorkflowInfo, image_name: str, prefix: str) -> dict:
    """A copy of the (already patched) workflow that loads ``image_name`` and saves under ``prefix``."""
    wf = copy.deepcopy(workflow)
    wf[info.load_id]["inputs"]["image"] = image_name
    for nid in (info.result_id, info.compare_out_id):
        if nid is not None and wf[nid]["class_type"] == "SaveImage":
            wf[nid]["inputs"]["filename_prefix"] = prefix if nid == info.result_id else f"{prefix}_compare"
    return wf


def fingerprint_view(workflow: dict, info: WorkflowInfo) -> dict:
    """The patched workflow without what differs between images (file names): the 'settings' of a result."""
    wf = for_image(workflow, info, "<image>", "<prefix>")
    for node in wf.values():
        node.pop("_meta", None)
    return wf


def parse_override(text: str) -> tuple[str, str, object]:
    """``--set NODE.input=value`` (NODE is a class_type or node id; value is JSON, else a plain string)."""
    target, sep, rest = text.partition(".")
    key, eq, raw = rest.partition("=")
    if not sep or not eq or not target or not key:
        raise ValueError(f"--set {text!r}: expected NODE.input=value, e.g. DDColorMergeLab.chroma=1.2")
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return target, key, value
