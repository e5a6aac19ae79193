"""DDColor Compare: side-by-side and split pictures."""

from __future__ import annotations

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
