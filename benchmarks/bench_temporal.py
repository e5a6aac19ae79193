"""DDColor Temporal Smooth: its speed against the network's, its effect, and the memory of the video node path.

Three tables, each measured in this one run:

1. **speed** — frames/s of ``ddcolor.temporal.smooth_ab`` at ab sizes 512 and 1024 (720p frames, square ab as
   the official square mode gives) against the network's own frames/s (forward only, tiny and large synthetic
   weights) at the same size, and smoother time / network time per frame (target: at most 25 %);
2. **effect** — on the synthetic two-shot clip of the tests (tests/temporal_clip.py): flicker after motion
   compensation relative to per-frame, error against the true moving colour, deviation of the first frame after
   the cut from its per-frame colour, for ``forward`` (what the node uses) and ``both`` (forward + backward
   averaged), per strength;
3. **memory** — peak RSS of the node path Resize by Preset → Colorize → Temporal Smooth → Merge (the real nodes,
   in a fresh subprocess with ComfyUI's modules) on a 300-frame 640×480 clip, against the size of the IMAGE
   batch, stage by stage.

    .venv/bin/python benchmarks/bench_temporal.py                     # all three (~5 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_temporal.py --device cuda --only speed --only effect   # on a GPU
    .venv/bin/python benchmarks/bench_temporal.py --only speed --variants tiny --sizes 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def emit(line: str = "") -> None:
    """One line of the report on stdout (tables are meant to be pasted into Markdown)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ 1. speed


def _time_flow_alone(flow: str, lights, device, frames: int) -> float:
    """Seconds per frame of the optical flow alone over ``lights`` (consecutive frames' L at the ab size), the way
    ``smooth_ab`` runs it: DIS in the thread pool, the torch flow batched on ``device``."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from ddcolor import temporal
    from ddcolor.flow import dense_flow

    if flow == "dis":
        workers = min(temporal._FLOW_WORKERS, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            start = time.perf_counter()
            list(pool.map(temporal._flow, lights[1:], lights[:-1]))
            return (time.perf_counter() - start) / (len(lights) - 1)
    stack = torch.from_numpy(np.stack(lights)).to(device)
    h, w = stack.shape[1:]
    per_batch = max(1, temporal._TORCH_FLOW_PIXELS // (h * w))
    with torch.inference_mode():
        dense_flow(stack[1:2], stack[:1])  # warm-up (kernels, allocator)
        _sync(device)
        start = time.perf_counter()
        for i in range(1, frames, per_batch):
            j = min(i + per_batch, frames)
            dense_flow(stack[i:j], stack[i - 1:j - 1])
        _sync(device)
    return (time.perf_counter() - start) / (frames - 1)


def bench_speed(args) -> list[dict]:
    import torch
    import torch.nn.functional as F

    import ddcolor
    from ddcolor.temporal import _small_lightness, resolve_flow, smooth_ab
    from tests.synthetic_weights import cached_weights
    from tests.temporal_clip import make_clip

    cuda = torch.device(args.device).type == "cuda"
    rows = []
    clip = make_clip(frames=args.frames, cut=args.frames, size_wh=(1280, 720), ab_scale=0.25)  # one shot
    for size in args.sizes:
        ab = F.interpolate(clip.ab_pred, size=(size, size), mode="bilinear", align_corners=False).contiguous()
        lights = [_small_lightness(clip.frames[t], (size, size)) for t in range(args.frames)]
        smooth, alone, peak = {}, {}, {}
        for flow in args.flows:
            smooth_ab(clip.frames[:3], ab[:3], device=args.device, flow=flow)  # warm-up
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.repeats):
                _sync(args.device)
                start = time.perf_counter()
                smooth_ab(clip.frames, ab, device=args.device, flow=flow)
                _sync(args.device)
                times.append((time.perf_counter() - start) / args.frames)
            smooth[flow] = statistics.median(times)
            peak[flow] = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
            alone[flow] = statistics.median(_time_flow_alone(flow, lights, args.device, args.frames)
                                            for _ in range(args.repeats))
        nets = {}
        for variant in args.variants:
            model = ddcolor.load_model(cached_weights(variant), device=args.device)
            x = torch.rand(args.net_batch, 3, size, size)
            net_times = []
            with torch.inference_mode():
                model(x.to(args.device))  # warm-up
                for _ in range(args.net_repeats):
                    _sync(args.device)
                    start = time.perf_counter()
                    model(x.to(args.device)).cpu()
                    _sync(args.device)
                    net_times.append((time.perf_counter() - start) / args.net_batch)
            nets[variant] = statistics.median(net_times)
            del model
        rows.append({"size": size, "smooth_ms": {k: v * 1e3 for k, v in smooth.items()},
                     "flow_ms": {k: v * 1e3 for k, v in alone.items()}, "peak_mib": peak,
                     "net_ms": {k: v * 1e3 for k, v in nets.items()}})
    auto = resolve_flow("auto", args.device)
    emit(f"\n## speed (device {args.device}, {torch.get_num_threads()} torch CPU threads, up to "
         f"{min(8, os.cpu_count() or 1)} DIS threads, {args.frames} frames of 720p; medians of {args.repeats} "
         f"(smoother) and {args.net_repeats} x batch {args.net_batch} (network); the node's flow here (auto): "
         f"{auto})\n")
    emit("| ab size | flow | smoother ms/frame | smoother frames/s | flow alone ms/frame | "
         + " | ".join(f"smoother / network ({v})" for v in args.variants)
         + (" | GPU peak MiB (smoother) |" if cuda else " |"))
    emit("|---|---|---|---|---|" + "---|" * len(args.variants) + ("---|" if cuda else ""))
    for r in rows:
        for flow in args.flows:
            ms = r["smooth_ms"][flow]
            ratios = " | ".join(f"{100 * ms / r['net_ms'][v]:.1f} %" for v in args.variants)
            emit(f"| {r['size']} | {flow} | {ms:.1f} | {1e3 / ms:.1f} | {r['flow_ms'][flow]:.1f} | {ratios} |"
                 + (f" {r['peak_mib'][flow]:.0f} |" if cuda else ""))
    emit("\n| ab size | network | network ms/frame | network frames/s |")
    emit("|---|---|---|---|")
    for r in rows:
        for v in args.variants:
            emit(f"| {r['size']} | {v} | {r['net_ms'][v]:.1f} | {1e3 / r['net_ms'][v]:.2f} |")
    return rows


# ------------------------------------------------------------------------------------------------ 2. effect


def bench_effect(args) -> list[dict]:
    import numpy as np
    import torch

    from ddcolor.flow import dense_flow
    from ddcolor.temporal import _flow, _small_lightness, smooth_ab
    from tests.temporal_clip import compensated_flicker, make_clip, true_flow

    clip = make_clip()
    base = compensated_flicker(clip.ab_pred, clip)
    per_frame_error = (clip.ab_pred - clip.ab_true).abs().mean().item()
    rows = []
    for flow in args.flows:
        for direction in ("forward", "both"):
            for strength in (0.5, 0.75, 0.9):
                start = time.perf_counter()
                result = smooth_ab(clip.frames, clip.ab_pred, strength=strength, direction=direction,
                                   device=args.device, flow=flow)
                seconds = time.perf_counter() - start
                rows.append({
                    "flow": flow, "direction": direction, "strength": strength,
                    "flicker": compensated_flicker(result.ab, clip) / base,
                    "error": (result.ab - clip.ab_true).abs().mean().item() / per_frame_error,
                    "cut_frame": (result.ab[clip.cut] - clip.ab_pred[clip.cut]).abs().max().item(),
                    "cuts": list(result.cuts), "cut_score": result.cut_scores[clip.cut],
                    "ms": 1e3 * seconds / clip.frames.shape[0]})
    emit(f"\n## effect on the synthetic clip (48 frames, cut at {clip.cut}; per-frame flicker {base:.2f} levels, "
         f"per-frame error {per_frame_error:.2f})\n")
    emit("| flow | direction | strength | flicker / per-frame | error / per-frame | first frame after cut, max |Δ| "
         "vs per-frame | cuts found (score of the cut) | ms/frame |")
    emit("|---|---|---|---|---|---|---|---|")
    for r in rows:
        emit(f"| {r['flow']} | {r['direction']} | {r['strength']} | {r['flicker']:.3f} | {r['error']:.3f} | "
             f"{r['cut_frame']:.2f} | {r['cuts']} ({r['cut_score']:.2f}) | {r['ms']:.1f} |")

    # the flows alone against the clip's true motion (interior: 4 ab pixels from the edge)
    h, w = clip.ab_pred.shape[2:]
    lights = np.stack([_small_lightness(clip.frames[t], (w, h)) for t in range(clip.frames.shape[0])])
    pairs = [t for t in range(1, lights.shape[0]) if t != clip.cut]
    truth = np.stack([true_flow(clip, t) for t in pairs])
    with torch.inference_mode():
        cur = torch.from_numpy(lights[pairs]).to(args.device)
        prev = torch.from_numpy(lights[[t - 1 for t in pairs]]).to(args.device)
        estimates = {"dis": np.stack([_flow(lights[t], lights[t - 1]) for t in pairs]),
                     "torch": dense_flow(cur, prev).cpu().numpy()}
    emit(f"\n| flow | endpoint error vs true motion, mean px | 95th percentile px | (true motion: mean "
         f"{np.sqrt((truth ** 2).sum(-1)).mean():.2f} px per frame, ab {w}x{h}) |")
    emit("|---|---|---|---|")
    for flow in args.flows:
        error = np.sqrt(((estimates[flow] - truth) ** 2).sum(-1))[:, 4:-4, 4:-4]
        emit(f"| {flow} | {error.mean():.3f} | {np.percentile(error, 95):.3f} | |")
        rows.append({"flow": flow, "epe_mean": float(error.mean()), "epe_p95": float(np.percentile(error, 95))})
    return rows


# ------------------------------------------------------------------------------------------------ 3. memory


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class _PeakSampler:
    """Samples this process's RSS every 5 ms; ``take()`` returns the peak since the last call."""

    def __init__(self) -> None:
        self.peak = _rss()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def take(self) -> int:
        time.sleep(0.02)
        peak, self.peak = self.peak, _rss()
        return peak

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


def memory_worker(frames: int, width: int, height: int, input_size: int, preview: bool = False) -> dict:
    """Runs in a fresh process: the node path on a synthetic clip; RSS in bytes per stage.

    ``preview``: Colorize builds its full-resolution preview. The video preset leaves it unconnected, and in a
    server Colorize then skips it; outside a server nothing says so, hence the switch.
    """
    import importlib
    import importlib.util
    import tempfile

    import torch

    from tests.e2e.server import find_comfyui_source
    from tests.synthetic_weights import cached_weights

    torch.set_num_threads(2)
    comfy_dir = Path(os.environ.get("COMFYUI_DIR") or find_comfyui_source())
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    comfy_args.base_directory = tempfile.mkdtemp(prefix="ddcolor-bench-")
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher

    spec = importlib.util.spec_from_file_location("ddcolor_pack_bench", REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["ddcolor_pack_bench"] = pack
    spec.loader.exec_module(pack)
    nodes = importlib.import_module("ddcolor_pack_bench.nodes")
    dd = importlib.import_module("ddcolor_pack_bench.ddcolor")
    net = dd.load_model(cached_weights("tiny"))
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))

    sampler = _PeakSampler()
    out = {"start": _rss()}
    # the IMAGE batch as ComfyUI's GetVideoComponents makes it: float32 (frames, H, W, 3)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(frames, height, width, 1, generator=g).expand(-1, -1, -1, 3).contiguous()
    out["image_bytes"] = image.numel() * 4
    sampler.take()  # (making it needed a temporary third of its size)
    out["after_image"] = _rss()
    image_out, size, keep = nodes.DDColorResizeByPreset.execute(image, "custom", input_size, False).result
    out["resize_peak"] = sampler.take()
    colorize_module = importlib.import_module("ddcolor_pack_bench.nodes.colorize")
    colorize_module.output_unused = lambda _slot: not preview
    ab, preview_image = nodes.DDColorColorize.execute(patcher, image_out, size, keep, 4, False).result
    out["ab_bytes"] = ab.numel() * 4
    out["preview_bytes"] = 0 if preview_image is None else preview_image.numel() * 4
    out["colorize_peak"] = sampler.take()
    out["after_colorize"] = _rss()
    smooth, _report = nodes.DDColorTemporalSmooth.execute(image_out, ab, 0.75, 0.5).result
    out["smooth_peak"] = sampler.take()
    merged = nodes.DDColorMergeLab.execute(image_out, smooth, "bilinear", 1.0).result[0]
    out["merge_peak"] = sampler.take()
    out["end"] = _rss()
    out["merged_bytes"] = merged.numel() * 4
    sampler.stop()
    return out


def bench_memory(args) -> dict:
    spec = json.dumps([args.mem_frames, 640, 480, args.mem_input_size, args.mem_preview])
    command = [sys.executable, __file__, "--memory-worker", spec]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"memory worker failed:\n{done.stderr[-4000:]}")
    m = json.loads(done.stdout.strip().splitlines()[-1])
    gib = 2**30
    img = m["image_bytes"]
    built = "preview connected (built)" if args.mem_preview else "preview unconnected, as in the video preset"
    emit(f"\n## memory of the node path ({args.mem_frames} frames 640x480, input_size {args.mem_input_size}, "
         f"tiny, CPU; Colorize {built})\n")
    emit(f"IMAGE batch {img / gib:.2f} GiB; ab {m['ab_bytes'] / gib:.3f} GiB; Colorize preview "
          f"{m['preview_bytes'] / gib:.2f} GiB; Merge output {m['merged_bytes'] / gib:.2f} GiB\n")
    emit("| stage | peak RSS GiB | above the IMAGE batch alone, GiB | in IMAGE batches |")
    emit("|---|---|---|---|")
    base = m["after_image"]
    for key, label in (("after_image", "IMAGE batch held (start)"), ("resize_peak", "Resize by Preset"),
                       ("colorize_peak", "Colorize"), ("smooth_peak", "Temporal Smooth"),
                       ("merge_peak", "Merge L + ab"), ("end", "all outputs held")):
        emit(f"| {label} | {m[key] / gib:.2f} | {(m[key] - base) / gib:.2f} | {(m[key] - base) / img:.2f} |")
    emit(f"\n(process RSS before the clip existed: {m['start'] / gib:.2f} GiB: Python, PyTorch, ComfyUI, the model)")
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("speed", "effect", "memory"), action="append")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (warping/blending and the network)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--variants", nargs="+", default=["tiny", "large"])
    parser.add_argument("--flows", nargs="+", choices=("dis", "torch"), default=["dis", "torch"],
                        help="optical flows to time (the node uses torch on a CUDA device, dis elsewhere)")
    parser.add_argument("--frames", type=int, default=24, help="frames per smoother timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--net-repeats", type=int, default=2)
    parser.add_argument("--net-batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mem-frames", type=int, default=300)
    parser.add_argument("--mem-input-size", type=int, default=128,
                        help="network size for the memory run (the ab part scales with its square)")
    parser.add_argument("--mem-preview", action="store_true",
                        help="memory run with Colorize's preview output built (the preset leaves it unconnected)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        emit(json.dumps(memory_worker(*json.loads(args.memory_worker))))
        return
    import torch

    torch.set_num_threads(args.threads)
    emit(f"# bench_temporal  torch {torch.__version__}  load average {os.getloadavg()[0]:.2f}")
    only = set(args.only or ("speed", "effect", "memory"))
    results = {}
    if "effect" in only:
        results["effect"] = bench_effect(args)
    if "speed" in only:
        results["speed"] = bench_speed(args)
    if "memory" in only:
        results["memory"] = bench_memory(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
