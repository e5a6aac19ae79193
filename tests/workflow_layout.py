"""Where the graph editor draws a UI workflow's nodes and wires, and which wires run under a node.

A wire is judged by its straight segment from the output slot to the input slot (the editor draws a curve
through the same two points). A node's box includes its title bar. Slot positions follow the canvas layout of
the ComfyUI frontend 1.32 (tests/e2e/test_ui.py checks them against the real editor's ``getConnectionPos``):

* output ``j`` and socket input ``k`` sit on the right / left edge, ``14 + 20 * index`` px below the body's top;
* an input that is a widget (it has a ``widget`` key) sits beside its widget: the widgets start under the slot rows
  (``20 * max(socket inputs, outputs)``), each 24 px high, the socket in the middle of its row.
"""

from __future__ import annotations

TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
SLOT_OFFSET = 14
WIDGET_ROW = 24
WIDGETS_TOP = 6


def box(node: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a node including its title bar, in canvas units."""
    x, y = node["pos"]
    w, h = node["size"]
    return (x, y - TITLE_HEIGHT, x + w, y + h)


def output_point(node: dict, slot: int) -> tuple[float, float]:
    x, y = node["pos"]
    return (x + node["size"][0], y + SLOT_OFFSET + SLOT_HEIGHT * slot)


def input_point(node: dict, slot: int, widget_order: list[str] | None = None) -> tuple[float, float]:
    """``widget_order``: the node's widget names in editor order (else the order of its widget inputs)."""
    x, y = node["pos"]
    inputs = node["inputs"]
    target = inputs[slot]
    sockets = [i for i in inputs if "widget" not in i]
    if "widget" not in target:
        return (x, y + SLOT_OFFSET + SLOT_HEIGHT * sockets.index(target))
    order = widget_order or [i["name"] for i in inputs if "widget" in i]
    rows = max(len(sockets), len(node.get("outputs") or []))
    row = order.index(target["widget"]["name"])
    return (x, y + SLOT_HEIGHT * rows + WIDGETS_TOP + WIDGET_ROW * row + (WIDGET_ROW - 4) / 2)


def segment_enters_box(p: tuple[float, float], q: tuple[float, float], b: tuple[float, float, float, float]) -> bool:
    """True if the open segment p-q passes through the inside of box ``b`` (touching an edge is not entering)."""
    (x0, y0), (x1, y1) = p, q
    left, top, right, bottom = b
    t0, t1 = 0.0, 1.0
    for delta, low, high, start in ((x1 - x0, left, right, x0), (y1 - y0, top, bottom, y0)):
        if delta == 0:
            if not low < start < high:
                return False
            continue
        a, c = (low - start) / delta, (high - start) / delta
        t0, t1 = max(t0, min(a, c)), min(t1, max(a, c))
    return t1 - t0 > 1e-9


def wires(workflow: dict, widget_orders: dict[str, list[str]] | None = None):
    """(link id, origin node, target node, start point, end point) of every link of a UI workflow."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, _type in workflow["links"]:
        o, t = nodes[origin], nodes[target]
        order = (widget_orders or {}).get(t["type"])
        yield link_id, o, t, output_point(o, origin_slot), input_point(t, target_slot, order)


def crossings(segments, boxes) -> list[str]:
    """What is wrong with the wires: one that runs under a node, or one that runs backwards (right to left).

    ``segments``: (label, start, end, labels of its own two nodes); ``boxes``: (label, (left, top, right, bottom)).
    A wire's own nodes are skipped (its end points lie on or just inside them); it must run left to right.
    """
    found = []
    for label, p, q, own in segments:
        if q[0] <= p[0]:
            found.append(f"{label} runs backwards (from x={p[0]:.0f} to x={q[0]:.0f})")
        found += [f"{label} runs under {name}" for name, b in boxes if name not in own and segment_enters_box(p, q, b)]
    return found
