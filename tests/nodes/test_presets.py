"""DDColor Resize by Preset: the sizes promised in the node description, through the real node."""

from __future__ import annotations

import pytest
import torch


def _image(height: int, width: int, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(height * 7 + width))


@pytest.mark.parametrize(
    ("height", "width", "preset", "expected"),
    [
        # big scans: the top of the preset's window
        (3000, 2000, "portrait", 672),
        (4000, 3000, "building", 1280),
        # mid-size photos follow their short side (rounded to 32)
        (800, 600, "portrait", 608),
        (1200, 1000, "building", 992),
        (700, 500, "portrait", 512),
        # small photos are not blown up past their own long side
        (400, 300, "portrait", 416),
        (600, 400, "building", 608),
        (40, 30, "portrait", 64),
        # short side below the window: lifted to the window's floor
        (1400, 460, "portrait", 480),
        (2000, 700, "building", 960),
    ],
)
def test_preset_sizes(nodes_pkg, height, width, preset, expected):
    node = nodes_pkg.DDColorResizeByPreset
    image = _image(height, width)
    out = node.execute(image, preset, 512, True)
    returned_image, size, keep_aspect = out.result
    assert size == expected
    assert returned_image is image  # the full-resolution original passes through untouched
    assert keep_aspect is True


def test_custom_uses_custom_size(nodes_pkg):
    out = nodes_pkg.DDColorResizeByPreset.execute(_image(3000, 2000), "custom", 1536, False)
    assert out.result[1:] == (1536, False)


def test_portrait_and_building_windows_hold_for_many_shapes(dd):
    from itertools import product

    choose = dd.presets.choose_input_size
    for h, w in product(range(50, 4100, 173), range(60, 4100, 211)):
        long_cap = 32 * -(-max(h, w) // 32)
        for preset, (low, high) in dd.presets.PRESET_WINDOWS.items():
            size = choose(h, w, preset, 512)
            assert size % 32 == 0, (h, w, preset, size)
            assert 64 <= size <= high, (h, w, preset, size)
            assert size <= max(long_cap, 64), (h, w, preset, size)
            if max(h, w) >= high:
                assert low <= size, (h, w, preset, size)


def test_bad_custom_size_is_rejected_with_a_message(nodes_pkg):
    node = nodes_pkg.DDColorResizeByPreset
    message = node.validate_inputs(custom_size=500)
    assert isinstance(message, str) and "multiple of 32" in message and "480 or 512" in message
    assert "outside 64..2048" in node.validate_inputs(custom_size=4096)
    assert node.validate_inputs(custom_size=640) is True
    assert node.validate_inputs() is True  # linked input: checked when it runs
    with pytest.raises(ValueError, match="multiple of 32"):
        node.execute(_image(64, 64), "custom", 500, False)


def test_unknown_preset_is_rejected(nodes_pkg):
    with pytest.raises(ValueError, match="portrait, building, custom"):
        nodes_pkg.DDColorResizeByPreset.execute(_image(64, 64), "faces", 512, False)
