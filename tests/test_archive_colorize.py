"""tools/archive_colorize.py on a real local Ray (2 CPUs, one session for the whole module) with the tiny
synthetic weights: ~20 scans of mixed sizes and modes (grey, RGBA, 16-bit PNG, RGB JPEG, one corrupt file).

Checked like a user would: the files on disk equal ``ddcolor.colorize`` of each scan, names follow the batch
tool's rules, a rerun skips what is done, a run killed half-way resumes without redoing finished photos, a
worker that dies mid-batch is retried, and bad input gets a message and an exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray", reason="the archive extra (ray[data]) is not installed")
pytest.importorskip("ray.data")

import ddcolor  # noqa: E402
from tools import archive_colorize as arc  # noqa: E402
from tools.batch_jobs import plan_jobs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIZE = 128  # network input size for the tests (a multiple of 32; 512 is only slower)
N_GOOD = 19


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for every test of the module (starting Ray on 2 cores takes several seconds)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _make_scans(root: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        h, w = 40 + 13 * i, 60 + 9 * i
        base = np.linspace(0, 1, w)[None, :] * np.linspace(0.3, 1, h)[:, None] + 0.05 * rng.random((h, w))
        base = np.clip(base, 0, 1)
        folder = root / f"box{i % 3}" if i % 2 else root
        folder.mkdir(parents=True, exist_ok=True)
        kind = i % 4
        if kind == 0:
            Image.fromarray((base * 255).astype(np.uint8), "L").save(folder / f"scan{i:02d}.png")
        elif kind == 1:
            rgba = np.dstack([(base * 255).astype(np.uint8)] * 3 + [(rng.random((h, w)) * 255).astype(np.uint8)])
            Image.fromarray(rgba, "RGBA").save(folder / f"scan{i:02d}.png")
        elif kind == 2:
            Image.fromarray((base * 65535).astype(np.uint16)).save(folder / f"scan{i:02d}.png")  # 16-bit grey
        else:
            grey = (base * 255).astype(np.uint8)
            Image.fromarray(np.dstack([grey] * 3), "RGB").save(folder / f"scan{i:02d}.jpg", quality=92)
    (root / "box1" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF truncated here")
    (root / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive") / "scans"
    _make_scans(root)
    return root


@pytest.fixture(scope="module")
def model(tiny_weights):
    return ddcolor.load_model(tiny_weights)


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = arc.main(args)
    except SystemExit as exc:  # argparse's parser.exit
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _expected_names(scans: Path) -> dict[str, str]:
    files = sorted(PurePosixPath(p.as_posix()) for p in scans.rglob("*") if p.suffix in (".png", ".jpg"))
    return {j.rel: j.out_rel for j in plan_jobs(files, PurePosixPath(scans.as_posix()))}


_REFERENCES: dict[Path, np.ndarray] = {}


def _reference(model, path: Path) -> np.ndarray:
    """What ddcolor.colorize makes of the scan, as 8-bit pixels (decoded here independently of the tool)."""
    if path not in _REFERENCES:
        _REFERENCES[path] = _compute_reference(model, path)
    return _REFERENCES[path]


def _compute_reference(model, path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        if img.mode == "I;16":
            pixels = np.asarray(img).astype(np.float32)[..., None] / 65535.0
        elif img.mode == "L":
            pixels = np.asarray(img).astype(np.float32)[..., None] / 255.0
        else:
            pixels = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
        alpha = np.asarray(img)[..., 3] if img.mode == "RGBA" else None
    rgb = ddcolor.colorize(model, torch.from_numpy(pixels), input_size=SIZE).numpy()
    out = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return np.dstack([out, alpha]) if alpha is not None else out


def _manifest(dst: Path) -> dict[str, dict]:
    entries = {}
    for part in sorted((dst / arc.STATE_DIR).glob("run-*.jsonl")):
        for line in part.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[entry["out"]] = entry
    return entries


def _check_outputs(model, scans: Path, dst: Path) -> None:
    names = _expected_names(scans)
    for rel, out_rel in names.items():
        if rel.endswith("corrupt.jpg"):
            assert not (dst / out_rel).exists()
            continue
        with Image.open(dst / out_rel) as img:
            got = np.asarray(img)
        want = _reference(model, scans / rel)
        assert got.shape == want.shape, rel
        diff = np.abs(got.astype(int) - want.astype(int))
        # batches of several photos may differ from one-at-a-time in the last float bit, so in one 8-bit level
        assert diff.max() <= 1, (rel, diff.max())
        assert (diff == 0).mean() > 0.99, rel
        if want.shape[-1] == 4:
            assert np.array_equal(got[..., 3], want[..., 3]), f"{rel}: alpha changed"


def test_outputs_equal_colorize_and_corrupt_file_is_reported(ray_address, scans, tmp_path, tiny_weights, model,
                                                              capsys):
    dst = tmp_path / "out"
    code, out, _err = _run([str(scans), str(dst), "--model", str(tiny_weights), "--input-size", str(SIZE),
                            "--no-progress"], capsys)
    assert code == arc.EXIT_FAILED, out
    assert f"Colorized {N_GOOD} photo(s)" in out and "1 failed" in out
    assert "box1/corrupt.jpg" in out and "damaged" in out
    _check_outputs(model, scans, dst)
    names = _expected_names(scans)
    assert {p.relative_to(dst).as_posix() for p in dst.rglob("*.png")} == {
        v for k, v in names.items() if not k.endswith("corrupt.jpg")}
    manifest = _manifest(dst)
    assert manifest["box1/corrupt.png"]["ok"] is False and "corrupt.jpg" in manifest["box1/corrupt.png"]["reason"]
    assert sum(e["ok"] for e in manifest.values()) == N_GOOD
    assert "corrupt.jpg" in (dst / arc.STATE_DIR / "failed-last-run.txt").read_text()

    # a second run would redo only the corrupt file (a real rerun is in test_killed_run_resumes)
    code, out, _err = _run([str(scans), str(dst), "--model", str(tiny_weights), "--input-size", str(SIZE),
                            "--dry-run"], capsys)
    assert code == arc.EXIT_OK and f"1 to colorize, {N_GOOD} already done" in out
    assert "todo  box1/corrupt.jpg -> box1/corrupt.png" in out

    # other settings are other results: nothing is skipped
    code, out, _err = _run([str(scans), str(dst), "--model", str(tiny_weights), "--input-size", "192",
                            "--dry-run"], capsys)
    assert code == arc.EXIT_OK and f"{N_GOOD + 1} to colorize, 0 already done" in out


def test_split_pipeline_survives_a_worker_that_dies(ray_address, scans, tmp_path, tiny_weights, model, capsys,
                                                    monkeypatch):
    """The GPU layout (decode and merge as tasks, the network in actors), run on CPU actors; the first network
    call kills its worker process: Ray restarts the actor and retries the batch."""
    marker = tmp_path / "crashed"
    monkeypatch.setenv(arc._CRASH_ENV, str(marker))
    dst = tmp_path / "out"
    code, out, _err = _run([str(scans), str(dst), "--model", str(tiny_weights), "--input-size", str(SIZE),
                            "--pipeline", "split", "--batch-size", "3", "--no-progress"], capsys)
    assert marker.exists(), "the test hook did not kill a worker"
    assert code == arc.EXIT_FAILED, out
    assert f"Colorized {N_GOOD} photo(s)" in out and "1 failed" in out
    _check_outputs(model, scans, dst)


def test_a_photo_that_always_kills_its_worker_fails_alone(ray_address, scans, tmp_path, tiny_weights, capsys,
                                                          monkeypatch):
    marker = tmp_path / "crashes"
    monkeypatch.setenv(arc._CRASH_ENV, f"{marker}::scan02.png")
    src = tmp_path / "three"
    src.mkdir()
    for name in ("scan00.png", "scan02.png", "scan04.png"):
        (src / name).write_bytes((scans / name).read_bytes())
    dst = tmp_path / "out"
    code, out, _err = _run([str(src), str(dst), "--model", str(tiny_weights), "--input-size", str(SIZE),
                            "--batch-size", "1", "--retries", "1", "--no-progress"], capsys)
    assert len(marker.read_text().split()) == 2, "expected one try and one retry"
    assert code == arc.EXIT_FAILED, out
    assert "Colorized 2 photo(s)" in out and "scan02.png: its batch failed 2 times" in out, out
    assert sorted(p.name for p in dst.glob("*.png")) == ["scan00.png", "scan04.png"]
    assert _manifest(dst)["scan02.png"]["ok"] is False


def test_killed_run_resumes(ray_address, scans, tmp_path, tiny_weights, model, capsys):
    """A run killed with SIGKILL half-way (a second driver process on the same cluster) keeps what it finished;
    the rerun does only the rest."""
    dst = tmp_path / "out"
    cmd = [sys.executable, "-m", "tools.archive_colorize", str(scans), str(dst), "--model", str(tiny_weights),
           "--input-size", str(SIZE), "--batch-size", "1", "--address", ray_address, "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(e["ok"] for e in _manifest(dst).values()) >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    done_before = {k: v for k, v in _manifest(dst).items() if v["ok"]}
    assert 4 <= len(done_before) < N_GOOD, "the run was not killed half-way"
    mtimes = {k: (dst / k).stat().st_mtime_ns for k in done_before}
    time.sleep(1)  # let the killed driver's actors be cleaned up

    code, out, _err = _run([str(scans), str(dst), "--model", str(tiny_weights), "--input-size", str(SIZE),
                            "--no-progress"], capsys)
    assert code == arc.EXIT_FAILED, out
    assert f"skipped {len(done_before)} already done" in out, out
    assert mtimes == {k: (dst / k).stat().st_mtime_ns for k in done_before}, "finished photos were redone"
    assert not list(dst.rglob(f"*{arc.PARTIAL_SUFFIX}"))
    _check_outputs(model, scans, dst)


def test_bad_input_gets_a_message_and_exit_status(ray_address, scans, tmp_path, tiny_weights, capsys):
    common = ["--model", str(tiny_weights), "--no-progress"]
    # output inside the input
    code, _out, err = _run([str(scans), str(scans / "colorized"), *common], capsys)
    assert code == arc.EXIT_USAGE and "inside the input" in err
    assert not (scans / "colorized").exists()
    # weights that are not on the (every) machine
    missing = tmp_path / "nowhere" / "ddcolor_paper_tiny.pth"
    code, _out, err = _run([str(scans), str(tmp_path / "o1"), "--model", str(missing), "--no-progress"], capsys)
    assert code == arc.EXIT_USAGE and str(missing) in err and "every machine" in err
    # a destination nobody can write to
    if os.geteuid() == 0:
        readonly = Path("/sys/ddcolor_archive_test")  # root ignores file modes; sysfs refuses new entries
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        readonly = locked / "out"
    code, _out, err = _run([str(scans), str(readonly), *common], capsys)
    assert code == arc.EXIT_USAGE and "cannot write" in err and str(readonly) in err
    # no images
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _out, err = _run([str(empty), str(tmp_path / "o2"), *common], capsys)
    assert code == arc.EXIT_USAGE and "no images found" in err


def test_unreachable_cluster_fails_fast(scans, tmp_path, tiny_weights):
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tools.archive_colorize", str(scans), str(tmp_path / "out"), "--model",
         str(tiny_weights), "--address", "127.0.0.1:9"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == arc.EXIT_USAGE, proc.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in proc.stderr
    assert time.monotonic() - t0 < 60
    assert not list((tmp_path / "out").rglob("*.png"))
