"""``ddcolor.step_callback``: a callback between the network's steps (how Cancel stops a long forward)."""

from __future__ import annotations

import pytest
import torch

import ddcolor


@pytest.fixture(scope="module")
def model(tiny_weights):
    return ddcolor.load_model(tiny_weights)


def _input() -> torch.Tensor:
    return torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(7))


def test_callback_runs_between_steps_and_changes_nothing(model):
    calls = []
    with torch.inference_mode():
        plain = model(_input())
        with ddcolor.step_callback(lambda: calls.append(1)):
            checked = model(_input())
    # tiny: 18 encoder blocks + 3 pixel-decoder layers + 9 colour-decoder layers + >= 1 row chunk of the last step
    assert len(calls) >= 31, len(calls)
    assert torch.equal(plain, checked)


def test_callback_that_raises_stops_the_forward_at_once(model):
    class CancelledError(Exception):
        pass

    calls = []

    def cancel() -> None:
        calls.append(1)
        raise CancelledError

    decoder_calls = []
    hook = model.decoder.register_forward_pre_hook(lambda *_: decoder_calls.append(1))
    try:
        with pytest.raises(CancelledError), torch.inference_mode(), ddcolor.step_callback(cancel):
            model(_input())
    finally:
        hook.remove()
    assert calls == [1] and decoder_calls == []


def test_callback_is_only_active_inside_the_with_block(model):
    calls = []
    with ddcolor.step_callback(lambda: calls.append(1)):
        pass
    with torch.inference_mode():
        model(_input())
    assert calls == []
