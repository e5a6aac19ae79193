"""Peak memory of the ComfyUI server for one photo through the shipped portrait preset, with and without
Colorize's full-resolution ``preview`` being built.

The shipped presets leave ``preview`` unconnected, so Colorize does not build it. To show what building it
costs (what every run paid before), the same prompt is also run with ``preview`` connected to a node that is
not an output (ComfyUI's ``ImageInvert``; it never runs, but the connection makes Colorize build the preview).
Each configuration gets a fresh server (``tests/e2e/server.py``, CPU, the synthetic *large* weights), so its
peak resident memory (``VmHWM``) belongs to that one prompt. Prints a table; not a test.

    .venv/bin/python benchmarks/bench_preview_memory.py [--sizes 1200x800 8000x6000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tests.e2e.server import ComfyServer, load_api_preset, node_ids  # noqa: E402
from tests.synthetic_weights import cached_weights  # noqa: E402


def emit(line: str) -> None:
    print(line, flush=True)  # noqa: T201


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def photo(path: Path, width: int, height: int) -> None:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = (128 + 90 * np.sin(xx / 37.0) * np.cos(yy / 23.0)).astype(np.uint8)
    Image.fromarray(grey, "L").convert("RGB").save(path)


def run_one(root: Path, weights: Path, size: tuple[int, int], connect_preview: bool) -> tuple[float, float]:
    server = ComfyServer(root, weights)
    server.start()
    try:
        path = root / f"photo_{size[0]}x{size[1]}.png"
        photo(path, *size)
        prompt = load_api_preset("ddcolor_portrait")
        (loader,) = node_ids(prompt, "DDColorModelLoader")
        prompt[loader]["inputs"]["model_name"] = server.model_name
        prompt[node_ids(prompt, "LoadImage")[0]]["inputs"]["image"] = server.upload(path)
        if connect_preview:
            (colorize,) = node_ids(prompt, "DDColorColorize")
            prompt["9001"] = {"class_type": "ImageInvert", "inputs": {"image": [colorize, 1]}}
        start = time.perf_counter()
        msgs, _ = server.run(prompt, timeout=1800)
        seconds = time.perf_counter() - start
        types = [m["type"] for m in msgs]
        if "execution_success" not in types:
            raise RuntimeError(f"the prompt failed: {types}\n{server.log_tail()}")
        return peak_mib(server.pid), seconds
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1200x800", "8000x6000"])
    args = parser.parse_args()
    weights = cached_weights("large")
    rows = []
    for text in args.sizes:
        width, height = (int(v) for v in text.lower().split("x"))
        for connect in (False, True):
            with tempfile.TemporaryDirectory(prefix="ddcolor_bench_preview_") as tmp:
                peak, seconds = run_one(Path(tmp), weights, (width, height), connect)
            rows.append((text, "connected (built)" if connect else "unconnected (skipped)", peak, seconds))
            emit(f"{text:>10}  preview {rows[-1][1]:22} peak {peak:8.0f} MiB  prompt {seconds:6.1f} s")
    emit("")
    emit(f"{'photo':>10} | {'preview':22} | {'server peak MiB':>15} | {'prompt s':>8}")
    for text, kind, peak, seconds in rows:
        emit(f"{text:>10} | {kind:22} | {peak:15.0f} | {seconds:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
