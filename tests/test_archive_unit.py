"""The parts of tools/archive_colorize.py that need no Ray: names, the manifest, decoding."""

from __future__ import annotations

import io
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from tools import archive_colorize as arc
from tools.batch_jobs import discover, plan_jobs


def _touch_image(path: Path, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), 128 if mode == "L" else (10, 20, 30)).save(path)


def test_output_names_agree_with_the_batch_tool(tmp_path):
    src = tmp_path / "scans"
    for rel in ("a.jpg", "a.png", "b.PNG", "sub/c.tif", "sub/deeper/d.jpeg", "e.compare.jpg", "e.jpg",
                ".hidden.jpg", ".cache/f.jpg", "sub/._g.jpg"):
        _touch_image(src / rel, "RGB")
    (src / "notes.txt").write_text("x")
    items, ignored = arc.list_images(*arc.open_fs(str(src)))
    found = discover([src])
    batch = {j.rel: j.out_rel for j in plan_jobs(found.files, found.base)}
    assert {i.rel: i.out for i in items} == batch
    assert batch["a.jpg"] == "a.jpg.png" and batch["b.PNG"] == "b.png" and batch["sub/c.tif"] == "sub/c.png"
    assert ignored == 1
    assert all(i.size > 0 and i.mtime for i in items)


def test_manifest_on_an_object_store_writes_parts_and_reads_them_back():
    fs = fsspec.filesystem("memory")
    root = "/archive-test/out"
    item = arc.Item(src="/in/a.jpg", rel="a.jpg", out="a.png", size=10, mtime="123")
    manifest = arc.Manifest(fs, root, flush_every=0.0)
    assert not manifest.local
    manifest.add({"out": "a.png", "input": "a.jpg", "ok": True, "settings": "S", "input_size": 10,
                  "input_mtime": "123", "output_size": 5})
    manifest.add({"out": "b.png", "input": "b.jpg", "ok": False, "reason": "corrupt", "settings": "S"})
    manifest.close()
    assert len(fs.glob(f"{root}/{arc.STATE_DIR}/run-*.jsonl")) == 2  # one part per flush: nothing is appended
    again = arc.Manifest(fs, root)
    again.load()
    assert again.entries["b.png"]["reason"] == "corrupt"
    assert again.is_done(item, "S", {"a.png": 5})
    assert not again.is_done(item, "other settings", {"a.png": 5})
    assert not again.is_done(item, "S", {"a.png": 4})  # the output is not the one recorded
    assert not again.is_done(item, "S", {})
    changed = arc.Item(src="/in/a.jpg", rel="a.jpg", out="a.png", size=10, mtime="124")
    assert not again.is_done(changed, "S", {"a.png": 5})
    fs.rm(root, recursive=True)


def test_write_file_leaves_no_partial_file(tmp_path):
    fs, root = arc.open_fs(str(tmp_path))
    arc.write_file(fs, f"{root}/x/y.png", b"data")
    assert (tmp_path / "x" / "y.png").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["y.png"]


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_keeps_16_bits_alpha_and_orientation():
    ramp = (np.arange(64, dtype=np.uint16) * 1000 + 7).reshape(8, 8)
    d16 = arc.decode_image(_encode(Image.fromarray(ramp)))
    assert d16.pixels.shape == (8, 8, 1) and d16.alpha is None
    np.testing.assert_allclose(d16.pixels[..., 0], ramp / 65535.0, atol=1e-6)  # not cut to 8 bits

    la = Image.merge("LA", [Image.new("L", (5, 4), 100), Image.new("L", (5, 4), 7)])
    d_la = arc.decode_image(_encode(la))
    assert d_la.pixels.shape == (4, 5, 3) and d_la.alpha.shape == (4, 5) and (d_la.alpha == 7).all()

    wide = Image.new("RGB", (6, 3), (50, 50, 50))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotated 90°: the viewer shows it 3 wide, 6 high
    d_rot = arc.decode_image(_encode(wide, "JPEG", exif=exif.tobytes()))
    assert d_rot.pixels.shape[:2] == (6, 3)
    kept = Image.Exif()
    kept.load(d_rot.exif)
    assert kept.get(0x0112) == 1  # the result is upright: its EXIF must not rotate it again

    cmyk = arc.decode_image(_encode(Image.new("CMYK", (4, 4), (0, 0, 0, 128)), "JPEG"))
    assert cmyk.pixels.shape == (4, 4, 3)


def test_decode_rejects_a_corrupt_file():
    with pytest.raises(Exception):  # noqa: B017 - Pillow raises several types; the tool catches them all
        arc.decode_image(b"\xff\xd8\xff\xe0 not a jpeg")


def test_output_inside_input_is_refused_before_anything_is_written(tmp_path):
    src = tmp_path / "scans"
    _touch_image(src / "a.png")
    args = arc.build_parser().parse_args([str(src), str(src / "out"), "--model", "m.pth"])
    with pytest.raises(arc.InputError, match="inside the input"):
        arc.make_plan(args)
    args = arc.build_parser().parse_args([str(src), str(tmp_path), "--model", "m.pth"])
    with pytest.raises(arc.InputError, match="a parent of"):
        arc.make_plan(args)
    assert not (src / "out").exists()
