"""``tools/batch_colorize.py`` against a real ComfyUI server: a folder in, a mirrored folder of colorized PNGs out.

The CLI runs as a user runs it (a separate process, ``python -m tools.batch_colorize``), against the session
server of ``tests/e2e/conftest.py`` with the synthetic tiny model at a small model-input size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.e2e.server import REPO_ROOT, ComfyServer

pytestmark = pytest.mark.e2e

INPUT_SIZE = "128"
PARTIAL = ".ddcolor-partial"
MANIFEST = ".ddcolor-batch.json"
LOCK = ".ddcolor-batch.lock"  # the tool's own bookkeeping, kept in the output folder like the manifest

# relative input path -> size of the expected output (width, height)
EXPECTED = {
    "a_small.jpg": (64, 48),
    "b_wide.png": (160, 90),
    "c_tall.jpg": (90, 160),
    "d_odd.jpg": (77, 33),
    "e.webp": (100, 100),
    "f.bmp": (96, 64),
    "g.tif": (64, 96),
    "grey.png": (120, 80),
    "alpha.png": (80, 60),
    "sub/h.jpg": (128, 96),
    "sub/deeper/rotated.jpg": (72, 96),  # stored 96x72 with EXIF orientation 6
}
BROKEN = "broken.jpg"


def _out_rel(rel: str) -> str:
    return rel.rsplit(".", 1)[0] + ".png"


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """12 files: 11 usable images of different sizes/modes/formats (one in a sub-sub-folder), one corrupt."""
    root = tmp_path_factory.mktemp("album")
    rng = np.random.default_rng(7)
    for i, (rel, (w, h)) in enumerate(sorted(EXPECTED.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # a distinct smooth grey picture per file, so outputs can be matched to their inputs
        yy, xx = np.mgrid[0:h, 0:w]
        phase = rng.uniform(0, 6.28, 2)
        grey = 128 + 90 * np.sin(xx / (5 + i) + phase[0]) * np.cos(yy / (7 + 2 * i) + phase[1])
        grey = grey.clip(0, 255).astype(np.uint8)
        if rel == "grey.png":
            Image.fromarray(grey, "L").save(path)
        elif rel == "alpha.png":
            rgba = np.dstack([grey, grey, grey, np.full_like(grey, 200)])
            rgba[: h // 2, :, 3] = 0
            Image.fromarray(rgba, "RGBA").save(path)
        elif rel.endswith("rotated.jpg"):
            exif = Image.Exif()
            exif[0x0112] = 6
            stored = np.ascontiguousarray(np.rot90(grey, 1))  # viewer rotates it back by 90 degrees CW
            Image.fromarray(np.dstack([stored] * 3)).save(path, quality=95, exif=exif.tobytes())
        else:
            Image.fromarray(np.dstack([grey] * 3)).save(path, quality=95)
    (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF this is not a photo")
    (root / "notes.txt").write_text("scanned by grandpa")
    return root


def _upright_grey(path: Path) -> np.ndarray:
    from PIL import ImageOps

    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("L"), dtype=np.float64)


def _cli(server, src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tools.batch_colorize", str(src), "-o", str(out), "--server", server.url,
            "--model", server.model_name, "--input-size", INPUT_SIZE, "--no-progress", *extra]


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def _check_outputs(src: Path, out: Path) -> None:
    """All 11 results present at their mirrored paths, full size, complete, and made from the right input."""
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file() and p.name not in (MANIFEST, LOCK))
    assert made == sorted(_out_rel(r) for r in EXPECTED), made
    for rel, size in EXPECTED.items():
        path = out / _out_rel(rel)
        with Image.open(path) as img:
            img.load()  # a half-written file would fail here
            assert img.size == size, (rel, img.size)
            assert img.mode == ("RGBA" if rel == "alpha.png" else "RGB"), (rel, img.mode)
        # colorizing keeps the lightness: the result's grey version matches its own input (not another one)
        ours = _upright_grey(path)
        theirs = _upright_grey(src / rel)
        corr = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
        assert corr > 0.95, (rel, corr)
    with Image.open(out / "alpha.png") as img:
        alpha = np.asarray(img)[..., 3]
    assert alpha[:30].max() == 0 and alpha[30:].min() == 200, "the input's transparency is kept"
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["entries"]) == sorted(_out_rel(r) for r in EXPECTED)


def _history_count(server) -> int:
    return len(requests.get(f"{server.url}/history", timeout=10).json())


def test_folder_is_colorized_and_rerun_does_nothing(comfy_server, photo_folder, tmp_path):
    out = tmp_path / "colorized"
    first = _run(_cli(comfy_server, photo_folder, out))
    assert first.returncode == 1, first.stdout + first.stderr  # one corrupt file
    _check_outputs(photo_folder, out)
    assert "Colorized 11 image(s)" in first.stdout, first.stdout
    assert f"{BROKEN}: cannot read image" in first.stdout
    assert "Ignored 1 file(s)" in first.stdout  # notes.txt

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    prompts_before = _history_count(comfy_server)
    second = _run(_cli(comfy_server, photo_folder, out))
    assert second.returncode == 1  # the corrupt file is still not colorized
    assert "Nothing new colorized" in second.stdout and "skipped 11" in second.stdout, second.stdout
    assert _history_count(comfy_server) == prompts_before, "the rerun must not send anything to the server"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before


def test_script_form_with_compare_and_only_good_files(comfy_server, photo_folder, tmp_path):
    files = [str(photo_folder / "a_small.jpg"), str(photo_folder / "sub" / "h.jpg")]
    out = tmp_path / "two"
    cmd = [sys.executable, "tools/batch_colorize.py", *files, "-o", str(out), "--server", comfy_server.url,
           "--model", comfy_server.model_name, "--input-size", INPUT_SIZE, "--compare", "--no-progress"]
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # files from two folders mirror their common folder
    for rel, (w, h) in (("a_small", (64, 48)), ("sub/h", (128, 96))):
        with Image.open(out / f"{rel}.png") as img:
            assert img.size == (w, h)
        with Image.open(out / f"{rel}.compare.png") as img:
            assert img.size[0] >= w and img.size[1] >= h  # before/after, at least the photo's size
    again = _run(cmd)
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout


def _wait_for_outputs(out: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = out / MANIFEST
        if manifest.exists():
            try:
                if len(json.loads(manifest.read_text())["entries"]) >= count:
                    return
            except ValueError:
                pass
        if proc.poll() is not None:
            pytest.fail(f"the client ended early with {proc.returncode}: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail(f"fewer than {count} results after {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_without_partial_files(comfy_server, photo_folder, tmp_path, sig):
    out = tmp_path / "resumed"
    prompts_before = _history_count(comfy_server)
    proc = subprocess.Popen(_cli(comfy_server, photo_folder, out), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_outputs(out, 3, proc)
    proc.send_signal(sig)
    stdout, _stderr = proc.communicate(timeout=60)
    assert proc.returncode in (-sig, 128 + sig), proc.returncode
    done_before = len(json.loads((out / MANIFEST).read_text())["entries"])
    assert 3 <= done_before < 11, "the run must really have been cut short"
    if sig == signal.SIGTERM:  # a clean stop: says how to resume, and leaves nothing of ours queued
        assert "run the same command again to resume" in stdout
        queue = requests.get(f"{comfy_server.url}/queue", timeout=10).json()
        assert not queue["queue_pending"], queue

    resumed = _run(_cli(comfy_server, photo_folder, out))
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert f"skipped {done_before} already done" in resumed.stdout, resumed.stdout
    assert f"Colorized {11 - done_before} image(s)" in resumed.stdout
    _check_outputs(photo_folder, out)
    assert not [p for p in out.rglob("*") if PARTIAL in p.name]
    if sig == signal.SIGKILL:
        # the killed run's prompts ran on to the end on the server: the rerun collected them, it did not queue
        # those photos again, so each of the 11 good photos went to the server exactly once
        assert _history_count(comfy_server) - prompts_before == 11, resumed.stderr
        assert "collecting their results instead of sending them again" in resumed.stderr, resumed.stderr


def test_server_restart_mid_batch_loses_nothing(comfy_server, photo_folder, tmp_path):
    out = tmp_path / "restart"
    proc = subprocess.Popen(_cli(comfy_server, photo_folder, out, "--max-in-flight", "3"), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_outputs(out, 2, proc)
        comfy_server.restart()
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stdout + stderr
    # either the restart was quick (the prompt is simply gone) or the server was away long enough to be set
    # aside and brought back by the probe; both send the photos in flight again
    assert ("lost this image (restarted?); sending it again" in stderr
            or ("is unreachable" in stderr and "answers again" in stderr)), stderr
    assert "Colorized" in stdout and "1 failed" in stdout, stdout
    failed_lines = [line for line in stdout.splitlines() if line.startswith("  ")]
    assert len(failed_lines) == 1 and BROKEN in failed_lines[0], stdout
    _check_outputs(photo_folder, out)


def test_setup_errors_exit_2(comfy_server, photo_folder, tmp_path):
    wrong_model = _run(_cli(comfy_server, photo_folder, tmp_path / "o") + ["--model", "nope.pth"])
    assert wrong_model.returncode == 2
    assert "'nope.pth' is not on the server" in wrong_model.stderr and comfy_server.model_name in wrong_model.stderr
    unreachable = _run([sys.executable, "-m", "tools.batch_colorize", str(photo_folder), "-o", str(tmp_path / "o"),
                        "--server", "http://127.0.0.1:9", "--no-progress"])
    assert unreachable.returncode == 2 and "cannot reach ComfyUI" in unreachable.stderr
    assert not (tmp_path / "o").exists() or not any(p.suffix == ".png" for p in (tmp_path / "o").rglob("*"))
    assert os.path.isdir(photo_folder)


def test_a_second_server_that_does_not_answer_is_left_out_and_named(comfy_server, photo_folder, tmp_path):
    out = tmp_path / "one_of_two"
    files = [str(photo_folder / "a_small.jpg"), str(photo_folder / "b_wide.png")]
    proc = _run([sys.executable, "-m", "tools.batch_colorize", *files, "-o", str(out), "--server", comfy_server.url,
                 "--server", "http://127.0.0.1:9", "--model", comfy_server.model_name, "--input-size", INPUT_SIZE,
                 "--no-progress"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "http://127.0.0.1:9 does not answer; going on without it" in proc.stderr, proc.stderr
    assert f"{comfy_server.url}: 2 photo(s)" in proc.stdout and "http://127.0.0.1:9: 0 photo(s)" in proc.stdout


def test_the_example_script_runs_through_the_same_client(comfy_server, tmp_path):
    photo = tmp_path / "old photo.jpg"
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(photo)
    env = {**os.environ, "COMFYUI_URL": comfy_server.url}
    env.pop("COMFYUI_DIR", None)
    proc = subprocess.run([sys.executable, "scripts/run_example.py", "--image", str(photo), "--out",
                           str(tmp_path / "out"), "--model", comfy_server.model_name, "--timeout", "300"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for kind in ("colorized", "compare"):
        with Image.open(tmp_path / "out" / f"old photo_{kind}.png") as img:
            img.load()
            assert img.size[0] >= 56 and img.size[1] >= 40


@pytest.fixture(scope="module")
def second_server(tiny_weights, tmp_path_factory):
    """A second real ComfyUI server on this machine, for the several-servers test."""
    server = ComfyServer(tmp_path_factory.mktemp("second_comfyui"), tiny_weights)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_two_servers_one_killed_and_restarted_loses_nothing(comfy_server, second_server, tmp_path):
    src = tmp_path / "album"
    rng = np.random.default_rng(3)
    for i in range(10):
        grey = rng.integers(0, 255, (48 + 4 * i, 64), dtype=np.uint8)
        (src / f"roll{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey, "L").save(src / f"roll{i % 2}" / f"p{i}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tools.batch_colorize", str(src), "-o", str(out),
           "--server", f"{comfy_server.url}#1", "--server", f"{second_server.url}#2",
           "--model", comfy_server.model_name, "--input-size", INPUT_SIZE]  # a line per photo on stderr
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_outputs(out, 2, proc)
        second_server.kill()  # kill -9 with photos in flight on it
        second_server.start()  # and back (about a minute): it rejoins if the batch is still running
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    assert f"{second_server.url} is unreachable" in stderr, stderr
    rels = [f"roll{i % 2}/p{i}.png" for i in range(10)]
    # none done twice: each photo is reported finished exactly once, and there is exactly one result per photo
    finished = [line.rsplit(" | ", 1)[-1] for line in stderr.splitlines() if line.endswith(" ok")]
    assert sorted(finished) == sorted(f"{r} ok" for r in rels), stderr
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                  and p.name not in (MANIFEST, LOCK))
    assert made == sorted(rels)
    for rel in rels:  # no photo lost, every output opens at the photo's size
        with Image.open(out / rel) as img, Image.open(src / rel) as original:
            img.load()
            assert img.size == original.size
    entries = json.loads((out / MANIFEST).read_text())["entries"]
    assert sorted(entries) == sorted(rels)
    by_server = {url: sum(e.get("server") == url for e in entries.values())
                 for url in (comfy_server.url, second_server.url)}
    assert sum(by_server.values()) == 10 and by_server[comfy_server.url] >= 1, by_server
    for url, count in by_server.items():
        assert f"{url}: {count} photo(s)" in stdout, stdout
