"""An optional callback run between the steps of the forward (to stop a long forward when the user cancels).

The network calls :func:`step` after every encoder block, pixel-decoder layer, colour-decoder layer and row
chunk of the final full-resolution step. With no callback set (the default) that is one context-variable
lookup; the maths is unchanged either way. A callback that raises aborts the forward with its exception.

    with ddcolor.step_callback(stop_if_cancelled):
        ab = ddcolor.predict_ab(model, model_input)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CALLBACK: ContextVar[Callable[[], None] | None] = ContextVar("ddcolor_step_callback", default=None)


def step() -> None:
    """Run the callback set by :func:`step_callback`, if any (called by the network between its steps)."""
    callback = _CALLBACK.get()
    if callback is not None:
        callback()


@contextmanager
def step_callback(callback: Callable[[], None] | None) -> Iterator[None]:
    """Run ``callback()`` between the network's steps while the ``with`` block runs (this thread/task only)."""
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)
