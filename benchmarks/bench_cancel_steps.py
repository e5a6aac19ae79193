"""How soon Cancel can take effect inside a forward, and what the step callback costs.

The network calls ``ddcolor.step_callback``'s callback between encoder blocks, decoder layers and row chunks of
the last step; ComfyUI's Cancel is checked there. For each variant x input size x images per forward this
prints, from one run:

* ``forward s``: median time of one forward with no callback set;
* ``+callback``: the same with a callback like ComfyUI's (a flag read under a lock), as a ratio (interleaved
  A/B, so machine load affects both alike);
* ``steps``: callback calls per forward; ``max gap s``: the longest time between two calls (or from the start
  / to the end), i.e. the longest Cancel can wait inside a forward.

    .venv/bin/python benchmarks/bench_cancel_steps.py --variants tiny --sizes 512 1024 --chunks 1 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ddcolor  # noqa: E402
from tests.synthetic_weights import cached_weights  # noqa: E402


def emit(line: str) -> None:
    print(line, flush=True)  # noqa: T201


def _comfy_like_check() -> None:
    """What ComfyUI's throw_exception_if_processing_interrupted does when nobody cancelled."""
    with _LOCK:
        if _INTERRUPTED:
            raise RuntimeError("interrupted")


_LOCK = threading.RLock()
_INTERRUPTED = False


def _time_forward(model, x, callback) -> tuple[float, int, float]:
    stamps: list[float] = []

    def record() -> None:
        callback()
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    with torch.inference_mode(), ddcolor.step_callback(record if callback else None):
        model(x)
    end = time.perf_counter()
    edges = [start, *stamps, end]
    gap = max(b - a for a, b in zip(edges, edges[1:], strict=False))
    return end - start, len(stamps), gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["tiny"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--chunks", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    emit(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    emit(f"{'variant':8} {'size':>5} {'chunk':>5} {'forward s':>10} {'+callback':>10} {'steps':>6} "
         f"{'max gap s':>10} {'s/image':>8}")
    for variant in args.variants:
        model = ddcolor.load_model(cached_weights(variant))
        for size in args.sizes:
            for chunk in args.chunks:
                x = torch.rand(chunk, 3, size, size, generator=torch.Generator().manual_seed(0))
                _time_forward(model, x, None)  # warm-up
                plain, with_cb, gaps, steps = [], [], [], 0
                for _ in range(args.repeats):  # interleaved A/B
                    plain.append(_time_forward(model, x, None)[0])
                    t, steps, gap = _time_forward(model, x, _comfy_like_check)
                    with_cb.append(t)
                    gaps.append(gap)
                p, c = statistics.median(plain), statistics.median(with_cb)
                emit(f"{variant:8} {size:>5} {chunk:>5} {p:>10.2f} {c / p:>9.3f}x {steps:>6} {max(gaps):>10.2f} "
                     f"{p / chunk:>8.2f}")
        del model


if __name__ == "__main__":
    main()
