"""Widget checks for ``validate_inputs``: a bad value is refused by ``POST /prompt`` before any work is done.

ComfyUI skips its own min/max/list checks for every input that a node's ``validate_inputs`` names, and
ComfyUI 0.3.75 never checks the choices of a V3 combo, nor catches NaN (``NaN < min`` and ``NaN > max`` are both
false). So each node names its combo and number widgets and checks them here, the same way on every ComfyUI
version. A linked input arrives as ``None`` (its value is not known before the run) and is checked by
``execute``.

Every function returns ``None`` when the value is fine, else one sentence naming the input, the value, and what
to use instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_choice(name: str, value: object, options: Sequence[str]) -> str | None:
    if value is None or value in options:
        return None
    return f"{name} = {value!r} is not one of the choices ({', '.join(options)}); pick one from the list."


def check_number(name: str, value: object, low: float, high: float, *, whole: bool = False) -> str | None:
    """``value`` must be a finite number in ``low..high`` (a whole number if ``whole``)."""
    if value is None:
        return None
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} = {value!r} is not {kind}; use {kind} from {low} to {high}."
    if whole and isinstance(value, float) and not value.is_integer():
        return f"{name} = {value!r} is not {kind}; use {kind} from {low} to {high}."
    if not math.isfinite(value):
        return f"{name} = {value} is not a usable number; use a value from {low} to {high}."
    if not low <= value <= high:
        return f"{name} = {value} is outside {low}..{high}; use a value in that range."
    return None


def verdict(*problems: str | None) -> bool | str:
    """What ``validate_inputs`` returns: ``True``, or every problem found, in one message."""
    found = [p for p in problems if p]
    return " ".join(found) if found else True
