"""DDColor Compare: side-by-side and split pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def _solid(value: float, height: int, width: int, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, height, width, 3), value)


def test_side_by_side_puts_before_left_and_after_right(nodes_pkg):
    before, after = _solid(0.2, 10, 8), _solid(0.8, 10, 8)
    (out,) = nodes_pkg.DDColorCompare.execute(before, after, "side_by_side", 0.5).result
    assert out.shape == (1, 10, 16, 3)
    assert torch.all(out[:, :, :8] == 0.2) and torch.all(out[:, :, 8:] == 0.8)


def test_split_at_position_with_a_divider(nodes_pkg):
    before, after = _solid(0.2, 12, 100), _solid(0.8, 12, 100)
    (out,) = nodes_pkg.DDColorCompare.execute(before, after, "split", 0.3).result
    assert out.shape == (1, 12, 100, 3)
    assert torch.all(out[:, :, :29] == 0.2)
    assert torch.all(out[:, :, 29] == 1.0)  # white divider at the split
    assert torch.all(out[:, :, 30:] == 0.8)


def test_split_at_the_edges_shows_one_image(nodes_pkg):
    before, after = _solid(0.2, 6, 20), _solid(0.8, 6, 20)
    (left,) = nodes_pkg.DDColorCompare.execute(before, after, "split", 0.0).result
    (right,) = nodes_pkg.DDColorCompare.execute(before, after, "split", 1.0).result
    assert torch.all(left == 0.8) and torch.all(right == 0.2)


def test_before_is_resized_to_after(nodes_pkg):
    before = torch.zeros(1, 20, 30, 3)
    before[:, :, 15:] = 1.0  # left half black, right half white
    after = _solid(0.5, 40, 60)
    (out,) = nodes_pkg.DDColorCompare.execute(before, after, "side_by_side", 0.5).result
    assert out.shape == (1, 40, 120, 3)
    assert torch.allclose(out[:, :, :25], torch.tensor(0.0)) and torch.allclose(out[:, :, 35:60], torch.tensor(1.0))
    assert torch.all(out[:, :, 60:] == 0.5)


def test_single_before_is_repeated_for_a_batch(nodes_pkg):
    (out,) = nodes_pkg.DDColorCompare.execute(_solid(0.1, 4, 4), _solid(0.9, 4, 4, batch=3), "split", 0.5).result
    assert out.shape == (3, 4, 4, 3)


def test_batch_mismatch_is_a_clear_error(nodes_pkg, dd):
    with pytest.raises(dd.errors.InputImageError, match="before has 2 images but after has 3"):
        nodes_pkg.DDColorCompare.execute(_solid(0.1, 4, 4, 2), _solid(0.9, 4, 4, 3), "split", 0.5)


# ------------------------------------------------------------------ the pictures the graph editor's comparer shows
def _saved(entries):
    import folder_paths
    from PIL import Image

    pictures = []
    for entry in entries:
        assert entry["type"] == "temp", entry
        path = Path(folder_paths.get_temp_directory()) / entry["subfolder"] / entry["filename"]
        assert path.is_file(), path
        with Image.open(path) as im:
            pictures.append(np.asarray(im.convert("RGB")))
    return pictures


def test_ui_output_saves_before_and_after_as_temp_images(nodes_pkg):
    before = torch.zeros(2, 30, 20, 1)
    before[1] = 0.5
    after = torch.zeros(2, 60, 40, 3)
    after[..., 0] = 1.0  # red
    after[1, ..., 2] = 1.0  # magenta
    result = nodes_pkg.DDColorCompare.execute(before, after, "split", 0.5)
    (out,) = result.result
    assert out.shape == (2, 60, 40, 3)  # the IMAGE output is what it always was
    ui = result.ui
    assert sorted(ui) == ["after_images", "before_images"]
    shown_before, shown_after = _saved(ui["before_images"]), _saved(ui["after_images"])
    assert [p.shape for p in shown_before] == [p.shape for p in shown_after] == [(60, 40, 3)] * 2  # after's size
    assert np.all(shown_before[0] == 0) and np.all(np.abs(shown_before[1].astype(int) - 128) <= 1)
    assert np.all(shown_after[0] == [255, 0, 0]) and np.all(shown_after[1] == [255, 0, 255])
    names = [e["filename"] for e in ui["before_images"] + ui["after_images"]]
    assert len(set(names)) == 4


def test_ui_output_of_a_huge_photo_is_scaled_down_for_the_screen(nodes_pkg, dd):
    before, after = _solid(0.2, 64, 5000), _solid(0.8, 64, 5000)
    result = nodes_pkg.DDColorCompare.execute(before, after, "side_by_side", 0.5)
    assert result.result[0].shape == (1, 64, 10000, 3)  # full resolution in the IMAGE output
    side = dd.preview.COMPARER_MAX_SIDE
    assert [p.shape for p in _saved(result.ui["after_images"])] == [(round(64 * side / 5000), side, 3)]


def test_ui_output_repeats_a_single_before(nodes_pkg):
    result = nodes_pkg.DDColorCompare.execute(_solid(0.1, 4, 4), _solid(0.9, 8, 8, batch=3), "split", 0.5)
    assert len(result.ui["before_images"]) == len(result.ui["after_images"]) == 3


def test_compare_is_an_output_node(nodes_pkg):
    # ComfyUI re-sends the UI output of a cached node only if it visits the node: output nodes always are
    info = nodes_pkg.DDColorCompare.GET_NODE_INFO_V1()
    assert info["output_node"] is True
