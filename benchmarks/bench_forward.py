"""Forward-pass and whole-pipeline speed / memory of ``ddcolor`` against a baseline DDColor, in one run.

Baseline: the DDColor network of ``spandrel_extra_arches`` (PyPI; a port of the official architecture that
ComfyUI's own model loader family uses), loaded with the same synthetic weights. Both get the same network
input (``tests/data/fixtures/model_input_<S>.npy``, the official pipeline's input for the fixture image), so
the forward times compare the networks only.

For each implementation × variant × size, a fresh subprocess (so peak RSS is per configuration) loads the
weights, warms up, then times ``repeats`` forward passes and ``repeats`` whole-pipeline calls on the fixture
photo (300×220). Reported: medians, steady RSS after loading, process peak RSS, achieved GFLOP/s over the
nominal FLOPs of the official network (SPEC §2/§10 numbers, or counted with ``--count-flops``), and the
floor = nominal FLOPs / this machine's fp32 GEMM rate (4096³ matmul, median, measured in the same run).

    .venv/bin/python benchmarks/bench_forward.py                      # tiny + large, 256 + 512
    .venv/bin/python benchmarks/bench_forward.py --variants tiny --sizes 256 --repeats 3 --check

``--check`` also prints max/mean |Δab| of our forward vs the baseline's and vs the official fixtures
``ab_<variant>_<S>.npy`` (SPEC §9 acceptance for the network alone: max ≤ 2e-3, mean ≤ 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "tests" / "data"
FIXTURES = DATA_DIR / "fixtures"

# Nominal forward GFLOPs of the official network (FlopCounterMode, conv + addmm + bmm; SPEC §2).
SPEC_GFLOPS = {("tiny", 512): 193.0, ("tiny", 256): 50.3, ("large", 512): 524.4, ("large", 256): 133.2}
IMPLS = ("ours", "baseline")


# ------------------------------------------------------------------------------------------------ shared


def weights_path(variant: str) -> Path:
    """The cached synthetic weights (same file and cache as the tests), generated if missing or stale."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.synthetic_weights import cached_weights

    return cached_weights(variant)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------------ worker


def _load_baseline(path: Path):
    """spandrel_extra_arches' DDColor with the same weights: its loader takes the official state dict (it
    pops the stale head_cls itself) and derives the hyper-parameters from the shapes."""
    from safetensors.torch import load_file
    from spandrel_extra_arches.architectures.DDColor import DDColorArch

    state = load_file(str(path))
    descriptor = DDColorArch().load(state)  # builds the net and load_state_dict(strict) into it
    model = descriptor.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return descriptor, model


def _fixture_image():
    import cv2
    import torch

    bgr = cv2.imread(str(DATA_DIR / "fixture_input.png"), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype("float32") / 255.0
    return torch.from_numpy(rgb)[None]  # (1, H, W, 3)


def _median_time(fn, warmup: int, repeats: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = weights_path(args.variant)
    x = torch.from_numpy(np.load(FIXTURES / f"model_input_{args.size}.npy"))[None]  # (1, 3, S, S)
    image = _fixture_image()
    load_avg = os.getloadavg()[0]
    gemm = matmul_gflops(args.threads, n=2048, repeats=5)  # this subprocess's share of the CPU, right now
    rss_start = _rss_bytes()

    t0 = time.perf_counter()
    if args.impl == "ours":
        sys.path.insert(0, str(REPO_ROOT))
        import ddcolor

        model = ddcolor.load_model(path)

        def pipeline():
            return ddcolor.colorize(model, image, input_size=args.size)
    else:
        descriptor, model = _load_baseline(path)
        grey = image.mean(dim=-1)[:, None]  # its call API takes (1, 1, H, W) grey

        def pipeline():
            # spandrel's own pipeline (resizes to its fixed input_size, bilinear ab, its own Lab maths)
            return descriptor(grey)

        model.input_size = (args.size, args.size)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_bytes()

    with torch.inference_mode():
        forward_s, forward_all = _median_time(lambda: model(x), args.warmup, args.repeats)
        pipeline_s, pipeline_all = _median_time(pipeline, args.warmup, args.repeats)
        ab = model(x)[0].float().numpy()

    result = {
        "impl": args.impl, "variant": args.variant, "size": args.size, "threads": torch.get_num_threads(),
        "load_s": load_s, "forward_s": forward_s, "forward_all": forward_all,
        "pipeline_s": pipeline_s, "pipeline_all": pipeline_all,
        "rss_start": rss_start, "rss_loaded": rss_loaded, "peak": _peak_bytes(),
        "gemm_gflops": gemm, "load_avg": load_avg,
    }
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(x)
        result["counted_gflops"] = counter.get_total_flops() / 1e9
    if args.ab_out:
        np.save(args.ab_out, ab)
    print("RESULT " + json.dumps(result), flush=True)  # noqa: T201


# ------------------------------------------------------------------------------------------------ driver


def matmul_gflops(threads: int, n: int = 4096, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    median, _ = _median_time(lambda: torch.mm(a, b), 1, repeats)
    return 2 * n**3 / median / 1e9


def run_worker(impl: str, variant: str, size: int, args: argparse.Namespace, ab_out: Path | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--variants", variant,
           "--sizes", str(size), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    if args.count_flops:
        cmd.append("--count-flops")
    if ab_out is not None:
        cmd += ["--ab-out", str(ab_out)]
    sys.stderr.write(f"running {impl} {variant}@{size} ...\n")
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{impl} {variant}@{size} failed (exit {done.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["tiny", "large"], choices=["tiny", "large"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512], choices=[256, 512])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="compare our ab with the baseline's and the fixtures")
    parser.add_argument("--count-flops", action="store_true",
                        help="count FLOPs with FlopCounterMode (on the baseline) instead of the SPEC numbers")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--ab-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    if args.worker:
        args.impl, args.variant, args.size = args.worker, args.variants[0], args.sizes[0]
        worker(args)
        return

    import numpy as np
    import torch

    for variant in args.variants:  # generate once, outside the timed subprocesses
        weights_path(variant)
    gemm = matmul_gflops(args.threads)
    load_avg = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average {load_avg:.1f}; "  # noqa: T201
          f"fp32 GEMM 4096^3: {gemm:.1f} GFLOP/s (median of 5)\n")
    if load_avg > 0.75 * (os.cpu_count() or 1):
        print("WARNING: other processes are using the CPU; timings will be inflated and ratios noisy\n")  # noqa: T201

    rows = []
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            for size in args.sizes:
                results = {}
                for impl in args.impls:
                    ab_out = Path(tmp) / f"ab_{impl}_{variant}_{size}.npy" if args.check else None
                    results[impl] = run_worker(impl, variant, size, args, ab_out)
                    rows.append(results[impl])
                if args.check:
                    ours = np.load(Path(tmp) / f"ab_ours_{variant}_{size}.npy") if "ours" in results else None
                    base = np.load(Path(tmp) / f"ab_baseline_{variant}_{size}.npy") if "baseline" in results else None
                    ref = np.load(FIXTURES / f"ab_{variant}_{size}.npy")
                    checks.append((variant, size, ours, base, ref))

    header = (f"{'impl':9}{'model':>7}{'S':>5}{'GFLOPs':>8}{'forward s':>11}{'(min)':>7}{'GFLOP/s':>9}"
              f"{'pipeline s':>12}{'(min)':>7}"
              f"{'load s':>8}{'RSS MiB':>9}{'peak MiB':>10}{'floor s':>9}{'GEMM':>7}{'load':>6}")
    print(header)  # noqa: T201
    print("-" * len(header))  # noqa: T201
    counted = {(r["variant"], r["size"]): r["counted_gflops"]
               for r in rows if r["impl"] == "baseline" and "counted_gflops" in r}
    for r in rows:
        nominal = counted.get((r["variant"], r["size"]), SPEC_GFLOPS[(r["variant"], r["size"])])
        r["nominal_gflops"] = nominal
        print(f"{r['impl']:9}{r['variant']:>7}{r['size']:>5}{nominal:>8.1f}{r['forward_s']:>11.2f}"  # noqa: T201
              f"{min(r['forward_all']):>7.2f}{nominal / r['forward_s']:>9.1f}{r['pipeline_s']:>12.2f}"
              f"{min(r['pipeline_all']):>7.2f}{r['load_s']:>8.1f}"
              f"{_mib(r['rss_loaded']):>9}{_mib(r['peak']):>10}{nominal / gemm:>9.2f}"
              f"{r['gemm_gflops']:>7.0f}{r['load_avg']:>6.1f}")
    print()  # noqa: T201
    by_key = {(r["impl"], r["variant"], r["size"]): r for r in rows}
    for variant in args.variants:
        for size in args.sizes:
            ours, base = by_key.get(("ours", variant, size)), by_key.get(("baseline", variant, size))
            if ours and base:
                print(f"{variant}@{size}: ours/baseline forward {ours['forward_s'] / base['forward_s']:.2f}, "  # noqa: T201
                      f"pipeline {ours['pipeline_s'] / base['pipeline_s']:.2f}, "
                      f"peak RSS {ours['peak'] / base['peak']:.2f}; "
                      f"ours / floor {ours['forward_s'] / (ours['nominal_gflops'] / gemm):.2f}; "
                      f"fastest runs: forward {min(ours['forward_all']) / min(base['forward_all']):.2f}, "
                      f"pipeline {min(ours['pipeline_all']) / min(base['pipeline_all']):.2f}")
    if any("counted_gflops" in r for r in rows):
        for r in rows:
            print(f"counted GFLOPs {r['impl']} {r['variant']}@{r['size']}: {r['counted_gflops']:.1f}")  # noqa: T201
    print("(medians; (min) = fastest run, less sensitive to other jobs on a shared machine)")  # noqa: T201
    print("(GEMM = 2048^3 GFLOP/s measured inside that configuration's subprocess just before timing, load = "  # noqa: T201
          "1-min load average then: if they vary between rows, the machine was shared and the ratios are noisy)")
    print("(pipeline: ours = ddcolor.colorize on the 300x220 fixture photo; baseline = spandrel's call API on "  # noqa: T201
          "the same photo as grey; peak = process ru_maxrss incl. imports and weight loading)")

    for variant, size, ours, base, ref in checks:
        parts = [f"check {variant}@{size}:"]
        if ours is not None and base is not None:
            d = np.abs(ours - base)
            parts.append(f"ours vs baseline max|dab| {d.max():.2e} mean {d.mean():.2e};")
        for name, ab in (("ours", ours), ("baseline", base)):
            if ab is not None:
                d = np.abs(ab - ref)
                ok = d.max() <= 2e-3 and d.mean() <= 1e-4
                parts.append(f"{name} vs official fixture max {d.max():.2e} mean {d.mean():.2e} "
                             f"({'ok' if ok else 'OUTSIDE SPEC §9'});")
        print(" ".join(parts))  # noqa: T201

    if args.json:
        args.json.write_text(json.dumps({"gemm_gflops": gemm, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
