"""Batch-tool throughput with one and with two ComfyUI servers, measured in the same run.

The same N photos (default 24) go through ``tools.batch_colorize`` twice, into fresh output folders:

* **1 server**: ``--server A``;
* **2 servers**: ``--server A --server B`` (each with the same in-flight limit).

By default two throw-away ComfyUI servers are started on this machine with the synthetic tiny weights
(``tests/e2e/server.py``, the pack's launcher), each warmed up with one photo first so that model loading is not
timed. ``--server URL`` (twice) measures existing servers instead, e.g. two GPU boxes (``--model NAME`` then names
the weights on them). ``--rounds`` repeats both measurements, interleaved, and the table shows the median.
Prints a table; not a test.

    python benchmarks/bench_batch_servers.py [--images 24] [--size 384x256] [--input-size 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import statistics
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

from tools.batch_colorize import main as batch_main  # noqa: E402


def make_photos(folder: Path, count: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        phase = rng.uniform(0, 6.28, 2)
        grey = (128 + 90 * np.sin(xx / (9 + i) + phase[0]) * np.cos(yy / (13 + i) + phase[1])).astype(np.uint8)
        Image.fromarray(np.dstack([grey] * 3)).save(folder / f"photo_{i:03d}.jpg", quality=92)


def run_batch(urls: list[str], model: str, src: Path, out: Path, input_size: int, in_flight: int) -> tuple[float, str]:
    args = [str(src), "-o", str(out), "--model", model, "--input-size", str(input_size), "--no-progress",
            "--max-in-flight", str(in_flight)]
    for url in urls:
        args += ["--server", url]
    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(io.StringIO()):
        code = batch_main(args)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"batch_colorize failed with exit code {code}:\n{sink.getvalue()}")
    return seconds, sink.getvalue()


def per_server(summary: str) -> str:
    counts = re.findall(r"^\s+(http\S+): (\d+) photo", summary, flags=re.M)
    return " + ".join(n for _url, n in counts) if counts else "all"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="384x256", help="WxH of the test photos")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--in-flight", type=int, default=2, help="in-flight limit of each server (default 2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server", action="append", default=[], help="an existing server URL (give two)")
    parser.add_argument("--model", help="model name on --server")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.server and (len(args.server) != 2 or not args.model):
        parser.error("give --server twice, and --model (the weights' name on the servers)")

    work = Path(tempfile.mkdtemp(prefix="ddcolor_bench_servers_"))
    servers = []
    try:
        if args.server:
            urls, model = args.server, args.model
        else:
            from tests.e2e.server import ComfyServer
            from tests.synthetic_weights import cached_weights

            weights = cached_weights("tiny")
            sys.stderr.write("starting two ComfyUI servers (a minute or two)...\n")
            for name in ("a", "b"):
                server = ComfyServer(work / f"comfy_{name}", weights)
                server.start()
                servers.append(server)
            urls, model = [s.url for s in servers], servers[0].model_name
        make_photos(work / "warm", 1, width, height)
        for i, url in enumerate(urls):  # each server loads the model on its first prompt: not timed
            run_batch([url], model, work / "warm", work / f"warm_out_{i}", args.input_size, args.in_flight)
        make_photos(work / "photos", args.images, width, height)
        times: dict[int, list[float]] = {1: [], 2: []}
        split = ""
        for r in range(args.rounds):
            for count in (1, 2) if r % 2 == 0 else (2, 1):
                seconds, summary = run_batch(urls[:count], model, work / "photos", work / f"out_{r}_{count}",
                                             args.input_size, args.in_flight)
                times[count].append(seconds)
                if count == 2:
                    split = per_server(summary)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    n = args.images
    one = statistics.median(times[1])
    out = sys.stdout
    out.write(f"\n{n} photos {width}x{height}, model input {args.input_size}, in-flight {args.in_flight} per server, "
              f"median of {args.rounds} round(s), torch {torch.__version__}, {torch.get_num_threads()} CPU threads "
              f"here\n\n")
    out.write(f"| servers | {'seconds':>8} | {'photos/s':>8} | {'vs 1 server':>11} | photos per server |\n")
    out.write(f"|---------|{'-' * 10}|{'-' * 10}|{'-' * 13}|-------------------|\n")
    for count in (1, 2):
        secs = statistics.median(times[count])
        out.write(f"| {count:>7} | {secs:8.2f} | {n / secs:8.2f} | {one / secs:10.2f}x | "
                  f"{(split if count == 2 else str(n)):<17} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
