"""Ray Data overhead of ``tools/archive_colorize.py`` against a plain ``ddcolor.colorize`` loop, and the per-photo
CPU and disk costs that a capacity plan needs.

Part 1 (overhead). The same N photos (default 40, 1200x800 JPEG, the synthetic tiny weights at 512) go through:

* **plain loop**: load the model, then for every photo read, decode (the tool's ``decode_image``),
  ``ddcolor.colorize`` (batch 1), encode the PNG and write it: the same work as the tool, in one process;
* **archive, Ray running**: ``tools.archive_colorize.main`` with a local Ray already started (as on a cluster):
  listing, the per-machine check, actor start and model load, the manifest and the progress are all counted;
* **archive, with Ray start**: the same plus ``ray.init`` (what one command on a laptop costs).

The runs alternate (plain, archive, plain, archive...) and the medians are compared. Both use all the CPUs
Ray is given (``--cpus``, default 2): the loop with ``torch.set_num_threads``, the tool with one CPU actor.
Besides wall time, the CPU seconds of this process and of every process it started (Ray's GCS, raylet, workers
and actors, counted before ``ray.shutdown``) are compared: on a machine shared with other jobs, wall time
depends on their load, CPU time much less.

Part 2 (capacity, ``--capacity``): per-photo milliseconds on one core of this machine for each CPU step of a
1-2 MP scan (JPEG decode, 16-bit PNG decode, ``prepare_input``, ``merge_lab``, PNG encode at zlib level 1 and
4), as CPU time of the process (one torch thread), and the disk's write rate for PNG-sized files with fsync
(wall time). README.md ("Archives on a Ray cluster") turns
these into hours for 1,000,000 scans.

    python benchmarks/bench_archive.py                      # part 1: 40 photos, 2 CPUs (~3 min on 2 cores)
    python benchmarks/bench_archive.py --capacity --skip-overhead
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
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

import ddcolor  # noqa: E402
from tests.synthetic_weights import cached_weights  # noqa: E402
from tools import archive_colorize as arc  # noqa: E402


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def make_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        phase = rng.uniform(0, 6.28, 2)
        grey = 128 + 90 * np.sin(xx / (9 + i) + phase[0]) * np.cos(yy / (13 + i) + phase[1])
        grey = np.clip(grey + rng.normal(0, 6, grey.shape), 0, 255).astype(np.uint8)  # film grain: real JPEG sizes
        path = folder / f"box{i % 4}" / f"scan_{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(grey, "L").save(path, quality=90)
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live descendants."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if proc is me else 0.0)
    return total


def plain_loop(weights: Path, photos: list[Path], out: Path, input_size: int, threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = ddcolor.load_model(weights)
    for path in photos:
        decoded = arc.decode_image(path.read_bytes())
        rgb = ddcolor.colorize(model, torch.from_numpy(decoded.pixels), input_size=input_size, batch_size=1)
        target = out / path.relative_to(photos[0].parent.parent).with_suffix(".png")
        arc.write_file(arc.open_fs(str(out))[0], target.as_posix(), arc.encode_png(rgb.numpy(), decoded.alpha,
                                                                                    decoded.exif))
    return time.perf_counter() - t0


def archive_run(weights: Path, src: Path, out: Path, input_size: int) -> float:
    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        code = arc.main([str(src), str(out), "--model", str(weights), "--input-size", str(input_size),
                         "--no-progress"])
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"archive_colorize exited with {code}:\n{sink.getvalue()}")
    return seconds


def overhead(args: argparse.Namespace, weights: Path, work: Path) -> None:
    import ray

    src = work / "scans"
    photos = make_photos(src, args.images, *args.size)
    times: dict[str, list[float]] = {"plain": [], "ray": [], "init": [], "plain_cpu": [], "ray_cpu": []}
    for rep in range(args.repeats):
        c0 = cpu_seconds()
        times["plain"].append(plain_loop(weights, photos, work / f"plain{rep}", args.input_size, args.cpus))
        c1 = cpu_seconds()
        times["plain_cpu"].append(c1 - c0)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        times["init"].append(time.perf_counter() - t0)
        times["ray"].append(archive_run(weights, src, work / f"ray{rep}", args.input_size))
        times["ray_cpu"].append(cpu_seconds() - c1)  # Ray's start, its daemons and workers, the run
        ray.shutdown()
        outs = sorted((work / f"ray{rep}").rglob("*.png"))
        if len(outs) != len(photos):
            raise SystemExit(f"archive run {rep} wrote {len(outs)} of {len(photos)} photos")
    plain, ray_t, init, plain_cpu, ray_cpu = (statistics.median(times[k])
                                              for k in ("plain", "ray", "init", "plain_cpu", "ray_cpu"))
    w, h = args.size
    say(f"\n## Ray Data overhead: {args.images} photos {w}x{h} JPEG, tiny@{args.input_size}, fp32, "
          f"{args.cpus} CPUs, median of {args.repeats} (load average now {os.getloadavg()[0]:.1f})\n")
    say("| path | seconds | photos/s | × plain loop |")
    say("|---|---|---|---|")
    say(f"| plain `ddcolor.colorize` loop (model load, decode, colorize, encode, write) | {plain:.1f} | "
          f"{args.images / plain:.2f} | 1.00 |")
    say(f"| CPU seconds: plain loop / archive_colorize with Ray's start | {plain_cpu:.1f} / {ray_cpu:.1f} | | "
        f"{ray_cpu / plain_cpu:.2f} |")
    say(f"| archive_colorize, Ray already running | {ray_t:.1f} | {args.images / ray_t:.2f} | "
          f"{ray_t / plain:.2f} |")
    say(f"| archive_colorize including `ray.init` ({init:.1f} s) | {ray_t + init:.1f} | "
          f"{args.images / (ray_t + init):.2f} | {(ray_t + init) / plain:.2f} |")
    runs = {k: ", ".join(f"{t:.1f}" for t in v) for k, v in times.items()}
    say(f"\nall runs (s): plain {runs['plain']}; archive {runs['ray']}; ray.init {runs['init']}")


def _ms(fn, repeats: int, clock=time.process_time) -> float:
    """Median milliseconds of ``fn``: CPU time of this process by default (robust when other jobs share the
    machine), wall time for I/O."""
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        runs.append(clock() - t0)
    return 1000 * statistics.median(runs)


def capacity(args: argparse.Namespace, work: Path) -> None:
    torch.set_num_threads(1)  # per core: Ray's CPU tasks each get one
    rng = np.random.default_rng(1)
    rows = []
    for w, h in ((1200, 800), (1600, 1200)):  # ~1 MP and ~2 MP
        yy, xx = np.mgrid[0:h, 0:w]
        grey = 128 + 90 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
        grey8 = np.clip(grey + rng.normal(0, 6, grey.shape), 0, 255).astype(np.uint8)
        jpeg = io.BytesIO()
        Image.fromarray(grey8, "L").save(jpeg, format="JPEG", quality=90)
        png16 = io.BytesIO()
        Image.fromarray(grey8.astype(np.uint16) * 257).save(png16, format="PNG")
        decoded = arc.decode_image(jpeg.getvalue())
        pixels = torch.from_numpy(decoded.pixels[None])
        ab = torch.from_numpy(rng.normal(0, 20, (1, 2, 512, 512)).astype(np.float32))
        rgb = ddcolor.merge_lab(pixels, ab)[0].numpy()
        png1 = arc.encode_png(rgb, None, None)
        steps = {
            "decode JPEG (grey, q90)": lambda j=jpeg: arc.decode_image(j.getvalue()),
            "decode 16-bit PNG": lambda p=png16: arc.decode_image(p.getvalue()),
            "prepare_input @512": lambda p=pixels: ddcolor.prepare_input(p, 512),
            "merge_lab (nearest)": lambda p=pixels, a=ab: ddcolor.merge_lab(p, a),
            "encode PNG, zlib 1 (the tool)": lambda r=rgb: arc.encode_png(r, None, None),
        }
        results = {name: _ms(fn, args.capacity_repeats) for name, fn in steps.items()}
        old = arc.PNG_COMPRESS_LEVEL
        arc.PNG_COMPRESS_LEVEL = 4
        results["encode PNG, zlib 4 (ComfyUI)"] = _ms(lambda r=rgb: arc.encode_png(r, None, None),
                                                       args.capacity_repeats)
        png4_size = len(arc.encode_png(rgb, None, None))
        arc.PNG_COMPRESS_LEVEL = old
        fs = arc.open_fs(str(work))[0]
        counter = iter(range(10**6))
        results["write + fsync (local disk)"] = _ms(
            lambda d=png1, fs=fs, n=counter: arc.write_file(fs, (work / "disk" / f"f{next(n)}.png").as_posix(), d),
            args.capacity_repeats, clock=time.perf_counter)
        rows.append((f"{w}x{h}", results, len(jpeg.getvalue()), len(png16.getvalue()), len(png1), png4_size))
    say(f"\n## Per-photo CPU cost on one core of this machine (CPU ms, median of {args.capacity_repeats}; "
          f"{os.cpu_count()} cores, load average now {os.getloadavg()[0]:.1f})\n")
    names = list(rows[0][1])
    say("| step | " + " | ".join(r[0] for r in rows) + " |")
    say("|---|" + "---|" * len(rows))
    for name in names:
        say(f"| {name} | " + " | ".join(f"{r[1][name]:.1f} ms" for r in rows) + " |")
    core = ["decode JPEG (grey, q90)", "prepare_input @512", "merge_lab (nearest)", "encode PNG, zlib 1 (the tool)",
            "write + fsync (local disk)"]
    say("| **CPU per photo (JPEG in, PNG out)** | " + " | ".join(
        f"**{sum(r[1][k] for k in core):.0f} ms**" for r in rows) + " |")
    say("\n| file | " + " | ".join(r[0] for r in rows) + " |")
    say("|---|" + "---|" * len(rows))
    say("| JPEG scan (q90) | " + " | ".join(f"{r[2] / 1e6:.2f} MB" for r in rows) + " |")
    say("| 16-bit PNG scan | " + " | ".join(f"{r[3] / 1e6:.2f} MB" for r in rows) + " |")
    say("| result PNG, zlib 1 / 4 | " + " | ".join(f"{r[4] / 1e6:.2f} / {r[5] / 1e6:.2f} MB" for r in rows)
        + " |")
    big = rows[-1]
    write_ms = big[1]["write + fsync (local disk)"]
    say(f"\ndisk: {big[4] / 1e6:.2f} MB files with fsync at {write_ms:.1f} ms each = "
          f"{big[4] / 1e6 / (write_ms / 1000):.0f} MB/s from one writer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(1200, 800),
                        help="WxH of the photos (default 1200x800)")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for Ray and torch threads of the loop")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--capacity", action="store_true", help="also measure the per-photo CPU and disk costs")
    parser.add_argument("--capacity-repeats", type=int, default=5)
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    weights = cached_weights("tiny")
    with tempfile.TemporaryDirectory(prefix="bench_archive_") as tmp:
        work = Path(tmp)
        if not args.skip_overhead:
            overhead(args, weights, work)
        if args.capacity:
            capacity(args, work)


if __name__ == "__main__":
    main()
