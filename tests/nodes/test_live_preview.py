"""Live preview while colorizing: the latest finished photo, small, through ComfyUI's progress-bar hook."""

from __future__ import annotations

import comfy.utils
import numpy as np
import pytest
import torch

SIZE = 64


@pytest.fixture()
def previews():
    """Every ProgressBar update as (value, total, preview or None), through ComfyUI's global hook."""
    events: list[tuple[int, int, object]] = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None:
                                             events.append((int(value), int(total), preview)))
    yield events
    comfy.utils.set_progress_bar_global_hook(previous)


def _photos(batch: int, height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(batch, height, width, 1, generator=g).expand(-1, -1, -1, 3).contiguous()


def test_colorize_sends_a_small_preview_of_the_latest_photo(nodes_pkg, dd, tiny_patcher, previews):
    photos = _photos(4, 300, 600)  # long side above the preview size
    ab, _ = nodes_pkg.DDColorColorize.execute(tiny_patcher, photos, input_size=SIZE, keep_aspect=False,
                                              batch_size=1, offload_after_run=False).result
    assert [(v, t) for v, t, _p in previews] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    shown = [(v, p) for v, _t, p in previews if p is not None]
    assert shown[0][0] == 1 and shown[-1][0] == 4, "the first and the last photo are always shown"
    for _value, (kind, picture, max_size) in shown:
        assert kind == "JPEG" and max_size is None
        assert picture.size == (256, 128) and picture.mode == "RGB"
    expected = dd.preview.live_preview(photos[3], ab[3]).numpy()
    assert np.array_equal(np.asarray(shown[-1][1][1]), expected)
    grey = np.asarray(shown[-1][1][1]).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).mean() > 1.0, "the preview is in colour"


def test_throttle_allows_a_few_per_second(dd):
    now = [0.0]
    throttle = dd.preview.Throttle(interval=0.5, clock=lambda: now[0])
    got = []
    for step in range(20):  # 20 photos finishing 0.1 s apart
        now[0] = step * 0.1
        got.append(throttle.ready(last=step == 19))
    assert [i for i, ok in enumerate(got) if ok] == [0, 5, 10, 15, 19]


def test_live_preview_of_a_tiny_or_extreme_photo(dd):
    ab = torch.zeros(2, 8, 8)
    assert tuple(dd.preview.live_preview(torch.rand(5000, 3, 1), ab).shape) == (256, 1, 3)
    assert tuple(dd.preview.live_preview(torch.rand(10, 12, 3), ab).shape) == (10, 12, 3)  # never enlarged
