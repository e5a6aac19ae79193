"""Throughput of batch colorizing over ComfyUI's HTTP API vs calling ``ddcolor.colorize`` directly.

The same N small photos (default 10) and the same weights go through both paths in one run:

* **API**: ``tools.batch_colorize`` against a ComfyUI server (upload, queue, websocket, download, atomic
  write, manifest), after one warm-up image so the server has loaded the model;
* **direct**: ``ddcolor.load_model`` + ``ddcolor.colorize`` in this process (model load timed separately,
  one warm-up image), with the workflow's settings (square resize, bilinear upsampling).

By default a throw-away ComfyUI server is started with the synthetic tiny weights (``tests/e2e/server.py``);
``--server URL --model NAME --weights FILE`` measures an existing server instead (``FILE`` must be the same
weights as ``NAME`` on the server, for the direct path). Prints a table; not a test.

    python benchmarks/bench_api_throughput.py [--images 10] [--size 384x256] [--input-size 512]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import ddcolor  # noqa: E402
from tools.batch_colorize import main as batch_main  # noqa: E402


def make_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        phase = rng.uniform(0, 6.28, 2)
        grey = (128 + 90 * np.sin(xx / (9 + i) + phase[0]) * np.cos(yy / (13 + i) + phase[1])).astype(np.uint8)
        path = folder / f"photo_{i:02d}.jpg"
        Image.fromarray(np.dstack([grey] * 3)).save(path, quality=92)
        paths.append(path)
    return paths


def run_api(server: str, model: str, src: Path, out: Path, input_size: int) -> float:
    args = [str(src), "-o", str(out), "--server", server, "--model", model, "--input-size", str(input_size),
            "--no-progress"]
    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        code = batch_main(args)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"batch_colorize failed with exit code {code}:\n{sink.getvalue()}")
    return seconds


def run_direct(weights: Path, paths: list[Path], input_size: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    model = ddcolor.load_model(weights, device="cpu", dtype=torch.float32)
    load_s = time.perf_counter() - t0

    def load(p: Path) -> torch.Tensor:
        with Image.open(p) as img:
            return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]

    ddcolor.colorize(model, load(paths[0]), input_size=input_size, resize_mode="square", upsample="bilinear")
    t0 = time.perf_counter()
    images = [load(p)[0] for p in paths]  # decoding is part of the work, as on the server
    out = ddcolor.colorize(model, images, input_size=input_size, resize_mode="square", upsample="bilinear",
                           batch_size=1)
    for i, img in enumerate(out):  # and so is encoding the PNG
        Image.fromarray((img.numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)).save(
            paths[0].parent.parent / f"direct_{i}.png", compress_level=4)
    return load_s, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--size", default="384x256", help="WxH of the test photos")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--server", help="an existing ComfyUI URL (default: start one with the tiny weights)")
    parser.add_argument("--model", help="model name on --server")
    parser.add_argument("--weights", type=Path, help="the same weights file, for the direct path")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    work = Path(tempfile.mkdtemp(prefix="ddcolor_bench_api_"))
    server = None
    try:
        if args.server:
            if not (args.model and args.weights):
                parser.error("--server needs --model (name on the server) and --weights (same file, local)")
            url, model, weights = args.server, args.model, args.weights
        else:
            from tests.e2e.server import ComfyServer
            from tests.synthetic_weights import cached_weights

            weights = cached_weights("tiny")
            server = ComfyServer(work / "comfy", weights)
            sys.stderr.write("starting a ComfyUI server (about a minute)...\n")
            server.start()
            url, model = server.url, server.model_name
        src = work / "photos"
        warm = work / "warm"
        src.mkdir()
        warm.mkdir()
        paths = make_photos(src, args.images, width, height)
        shutil.copy(paths[0], warm / "warm.jpg")
        # warm-up: the server loads the model on its first prompt
        run_api(url, model, warm, work / "warm_out", args.input_size)
        api_s = run_api(url, model, src, work / "api_out", args.input_size)
        load_s, direct_s = run_direct(weights, paths, args.input_size)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    n = args.images
    rows = [
        ("direct ddcolor.colorize", direct_s, n / direct_s),
        ("ComfyUI API (batch_colorize)", api_s, n / api_s),
    ]
    out = sys.stdout
    out.write(f"\n{n} photos {width}x{height}, model input {args.input_size}, weights {Path(weights).name}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    out.write(f"direct model load (not in the table): {load_s:.2f} s\n\n")
    out.write(f"| {'path':<30} | {'seconds':>8} | {'images/s':>8} |\n|{'-' * 32}|{'-' * 10}|{'-' * 10}|\n")
    for name, secs, rate in rows:
        out.write(f"| {name:<30} | {secs:8.2f} | {rate:8.2f} |\n")
    out.write(f"\nAPI / direct time ratio: {api_s / direct_s:.2f}x "
              f"(overhead per image {1000 * (api_s - direct_s) / n:.0f} ms)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
